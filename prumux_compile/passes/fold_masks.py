"""``fold-masks``: multiply the soft zs.pt masks into the weights as upstream ``update_params`` does.

Semantics: docs/checkpoint-formats.md §2.9 (upstream ``evaluation.py`` = ``update_params`` then ``prune_model_with_z``), including
its asymmetries: ``hidden_z`` scales the columns of the word/position/type tables, the hadamard instance
vectors, the input columns of Q/K/V/W1, the demux input columns (both halves of ``dense_1``) and the pooler,
and the rows of ``Wo``, ``bo`` and ``W2`` but NOT ``b2``; LayerNorm affines and the demux instance embedding
are not scaled. ``head_z`` scales the rows of ``Wv``/``bv`` per head, ``head_layer_z`` scales ``Wo``/``bo``;
``intermediate_z`` scales the columns of ``W2``, ``mlp_z`` scales ``W2``/``b2``.

A layer mask counts only beside its finer mask, as in upstream ``update_params`` / ``prune_model_with_z``:
``head_layer_z`` without ``head_z`` and ``mlp_z`` without ``intermediate_z`` are ignored (named in the report;
docs/checkpoint-formats.md §2.9).

What remains are binary keep masks: hidden dims with ``hidden_z != 0``, heads with
``head_z * head_layer_z != 0``, FFN dims with ``intermediate_z * mlp_z != 0``. A sublayer with nothing kept
is removed by the later passes even when its layer-level mask is non-zero (field fault F3 in docs/field-faults.md: upstream's
pruning-phase *masked* forward would keep its bias and LayerNorm; evaluation.py, which we follow, removes it).
"""
from __future__ import annotations

import torch

from prumux_compile.ir import ModelIR
from prumux_compile.passes.base import Pass


#: layer mask -> the finer mask it is folded with (and without which upstream evaluation ignores it).
_FINER = {"head_layer_z": "head_z", "mlp_z": "intermediate_z"}


class FoldMasks(Pass):
    name = "fold-masks"

    def applies(self, ir: ModelIR) -> bool:
        return ir.masks is not None

    def apply(self, ir: ModelIR) -> tuple[str, dict]:
        m = ir.masks
        n_layers = ir.original["layers"]
        heads = ir.original["heads"]
        d = ir.hidden
        hz = m.get("hidden_z")
        head_z = m["head_z"].reshape(n_layers, heads) if "head_z" in m else None
        # a layer mask only together with its finer mask (upstream evaluation; module docstring)
        ignored = [k for k, finer in _FINER.items() if k in m and finer not in m]
        hlz = m["head_layer_z"].reshape(n_layers) if "head_layer_z" in m and head_z is not None else None
        iz = m["intermediate_z"].reshape(n_layers, -1) if "intermediate_z" in m else None
        mz = m["mlp_z"].reshape(n_layers) if "mlp_z" in m and iz is not None else None
        dh = ir.head_size

        if hz is not None:
            e = ir.embeddings
            e.word, e.position, e.token_type = e.word * hz, e.position * hz, e.token_type * hz
            if ir.mux is not None:
                # hadamard [N, d]: dims; random_ortho [N, d_out, d_in]: the input axis, as upstream's
                # broadcasting ``mul`` does (the output side is restricted to kept dims by prune-hidden).
                ir.mux.instance_embedding = ir.mux.instance_embedding * hz
            if ir.demux is not None:
                t = ir.demux.tensors
                hz2 = torch.cat([hz, hz])
                if ir.demux.variant == "index_pos":
                    t["dense_1.weight"] = t["dense_1.weight"] * hz2
                elif ir.demux.variant == "index":
                    t["dense.weight"] = t["dense.weight"] * hz2
                else:
                    for n in range(ir.num_instances):
                        t[f"dense_{n}.weight"] = t[f"dense_{n}.weight"] * hz
            if ir.pooler is not None:
                ir.pooler = (ir.pooler[0] * hz, ir.pooler[1])
            keep = hz != 0
            ir.hidden_keep = None if bool(keep.all()) else keep

        for layer in ir.layers:
            i = layer.index
            a = layer.attention
            if a is not None:
                if hz is not None:
                    a.wq, a.wk, a.wv = a.wq * hz, a.wk * hz, a.wv * hz
                    a.wo, a.bo = a.wo * hz[:, None], a.bo * hz
                keep = torch.ones(a.heads, dtype=torch.bool)
                if head_z is not None:
                    z = head_z[i][a.head_ids]
                    zr = z.repeat_interleave(dh)
                    a.wv, a.bv = a.wv * zr[:, None], a.bv * zr
                    keep &= z != 0
                if hlz is not None:
                    a.wo, a.bo = a.wo * hlz[i], a.bo * hlz[i]
                    keep &= bool(hlz[i] != 0)
                a.head_keep = None if bool(keep.all()) else keep
            f = layer.ffn
            if f is not None:
                if hz is not None:
                    f.w1 = f.w1 * hz
                    f.w2 = f.w2 * hz[:, None]
                keep = torch.ones(f.dims, dtype=torch.bool)
                if iz is not None:
                    z = iz[i][f.dim_ids]
                    f.w2 = f.w2 * z
                    keep &= z != 0
                if mz is not None:
                    f.w2, f.b2 = f.w2 * mz[i], f.b2 * mz[i]
                    keep &= bool(mz[i] != 0)
                f.dim_keep = None if bool(keep.all()) else keep
        ir.masks = None
        used = sorted(set(m) - set(ignored))
        kinds = ", ".join(used) or "no mask"
        soft = any(((m[k] != 0) & (m[k] != 1)).any().item() for k in used)
        note = (f"; ignored {', '.join(ignored)}: zs.pt has no {' / '.join(_FINER[k] for k in ignored)}, and upstream "
                "evaluation applies a layer mask only together with its finer mask") if ignored else ""
        return (f"folded {kinds} into the weights ({'soft' if soft else 'binary'} values){note}",
                {"masks": used, "ignored_masks": ignored, "soft": soft,
                 "hidden_kept": ir.hidden_kept(), "hidden": d})
