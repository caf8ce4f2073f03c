"""``prune-ffn``: physically remove intermediate (FFN) dims whose keep mask is False (docs/checkpoint-formats.md E7).

Slices rows of W1/b1 and columns of W2. Exact: removed dims have zero W2 columns after ``fold-masks``.
A layer with no dim kept is left to ``drop-empty-sublayers``.
"""
from __future__ import annotations

import torch

from prumux_compile.ir import ModelIR
from prumux_compile.passes.base import Pass


class PruneFFN(Pass):
    name = "prune-ffn"

    def applies(self, ir: ModelIR) -> bool:
        return any(l.ffn is not None and l.ffn.dim_keep is not None and l.ffn.dims_kept > 0 for l in ir.layers)

    def apply(self, ir: ModelIR) -> tuple[str, dict]:
        per_layer = {}
        for layer in ir.layers:
            f = layer.ffn
            if f is None or f.dim_keep is None or f.dims_kept == 0:
                continue
            k = torch.nonzero(f.dim_keep).flatten()
            before = f.dims
            f.w1, f.b1, f.w2 = f.w1[k], f.b1[k], f.w2[:, k]
            f.dim_ids = [f.dim_ids[i] for i in k.tolist()]
            f.dim_keep = None
            per_layer[layer.index] = {"before": before, "kept": f.dims}
        n = sum(v["before"] - v["kept"] for v in per_layer.values())
        return f"removed {n} FFN dims in {len(per_layer)} layers", {"layers": per_layer}
