"""``prune-hidden``: physically remove hidden dims whose keep mask is False (docs/checkpoint-formats.md E7, Q8).

Slices every tensor that touches the residual stream: embedding tables and LayerNorms, Q/K/V/W1 input
columns, Wo/W2 output rows and biases, every LayerNorm, the hadamard instance vectors ``[N, d'] -> [N, K]``
(random_ortho ``V_n[K][:, K]``), the demux inputs (both halves of index_pos ``dense_1`` / index ``dense``,
index_pos ``demux_instance_embedding``, every mlp ``dense_n``) and the pooler input. Exact: pruned dims are
identically 0 before the pass and LayerNorm statistics already run over kept dims only.
"""
from __future__ import annotations

import torch

from prumux_compile.ir import ModelIR
from prumux_compile.passes.base import Pass


class PruneHidden(Pass):
    name = "prune-hidden"

    def applies(self, ir: ModelIR) -> bool:
        return ir.hidden_keep is not None

    def apply(self, ir: ModelIR) -> tuple[str, dict]:
        keep = ir.hidden_keep
        k = torch.nonzero(keep).flatten()
        d = ir.hidden
        e = ir.embeddings
        e.word, e.position, e.token_type = e.word[:, k], e.position[:, k], e.token_type[:, k]
        e.ln_weight, e.ln_bias = e.ln_weight[k], e.ln_bias[k]
        for layer in ir.layers:
            a = layer.attention
            if a is not None:
                a.wq, a.wk, a.wv = a.wq[:, k], a.wk[:, k], a.wv[:, k]
                a.wo, a.bo = a.wo[k], a.bo[k]
                a.ln_weight, a.ln_bias = a.ln_weight[k], a.ln_bias[k]
            f = layer.ffn
            if f is not None:
                f.w1, f.w2, f.b2 = f.w1[:, k], f.w2[k], f.b2[k]
                f.ln_weight, f.ln_bias = f.ln_weight[k], f.ln_bias[k]
        if ir.mux is not None:
            v = ir.mux.instance_embedding
            ir.mux.instance_embedding = v[:, k][:, :, k] if ir.mux.variant == "random_ortho" else v[:, k]
        if ir.demux is not None:
            t = ir.demux.tensors
            k2 = torch.cat([k, k + d])
            if ir.demux.variant == "index_pos":
                t["demux_instance_embedding"] = t["demux_instance_embedding"][:, k]
                t["dense_1.weight"] = t["dense_1.weight"][:, k2]
            elif ir.demux.variant == "index":
                t["dense.weight"] = t["dense.weight"][:, k2]
            else:
                for n in range(ir.num_instances):
                    t[f"dense_{n}.weight"] = t[f"dense_{n}.weight"][:, k]
        if ir.pooler is not None:
            ir.pooler = (ir.pooler[0][:, k], ir.pooler[1])
        removed = [ir.hidden_ids[i] for i in range(d) if not keep[i]]
        ir.hidden_ids = [ir.hidden_ids[i] for i in k.tolist()]
        ir.hidden_keep = None
        return f"hidden dims {d} -> {len(k)}", {"before": d, "after": len(k), "removed": removed}
