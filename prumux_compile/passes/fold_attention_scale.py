"""``fold-attention-scale``: multiply the 1/sqrt(dh) attention scale into Wq and bq (docs/checkpoint-formats.md E8).

Bit-exact when dh is a power of 4 (1/sqrt(64) = 1/8); otherwise exact up to rounding.
"""
from __future__ import annotations

import math

from prumux_compile.ir import ModelIR
from prumux_compile.passes.base import Pass


class FoldAttentionScale(Pass):
    name = "fold-attention-scale"

    def applies(self, ir: ModelIR) -> bool:
        return any(l.attention is not None and not l.attention.q_prescaled for l in ir.layers)

    def apply(self, ir: ModelIR) -> tuple[str, dict]:
        done = []
        for layer in ir.layers:
            a = layer.attention
            if a is None or a.q_prescaled:
                continue
            s = 1.0 / math.sqrt(a.head_size)
            a.wq, a.bq = a.wq * s, a.bq * s
            a.q_prescaled = True
            done.append(layer.index)
        return f"scale 1/sqrt({ir.head_size}) folded into queries of {len(done)} layers", {"layers": done}
