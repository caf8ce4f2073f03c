"""``prune-heads``: physically remove attention heads whose keep mask is False (docs/checkpoint-formats.md E7).

Slices the head's 64-row (dh-row) blocks of Q/K/V and its columns of Wo. Exact: a removed head's value rows
are already 0 after ``fold-masks``. A layer with no head kept is left to ``drop-empty-sublayers`` (no
zero-width tensor is ever built, field fault F2 in docs/field-faults.md).
"""
from __future__ import annotations

import torch

from prumux_compile.ir import ModelIR
from prumux_compile.passes.base import Pass


class PruneHeads(Pass):
    name = "prune-heads"

    def applies(self, ir: ModelIR) -> bool:
        return any(l.attention is not None and l.attention.head_keep is not None and l.attention.heads_kept > 0
                   for l in ir.layers)

    def apply(self, ir: ModelIR) -> tuple[str, dict]:
        per_layer = {}
        for layer in ir.layers:
            a = layer.attention
            if a is None or a.head_keep is None or a.heads_kept == 0:
                continue
            dh = a.head_size
            heads = torch.nonzero(a.head_keep).flatten()
            rows = (heads[:, None] * dh + torch.arange(dh)[None, :]).flatten()
            a.wq, a.bq = a.wq[rows], a.bq[rows]
            a.wk, a.bk = a.wk[rows], a.bk[rows]
            a.wv, a.bv = a.wv[rows], a.bv[rows]
            a.wo = a.wo[:, rows]
            removed = [h for h, k in zip(a.head_ids, a.head_keep.tolist()) if not k]
            a.head_ids = [a.head_ids[i] for i in heads.tolist()]
            a.head_keep = None
            per_layer[layer.index] = {"kept": a.heads, "removed": removed}
        n = sum(len(v["removed"]) for v in per_layer.values())
        return f"removed {n} heads in {len(per_layer)} layers", {"layers": per_layer}
