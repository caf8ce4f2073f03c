"""``drop-empty-sublayers``: remove attention / FFN sublayers with nothing kept, and layers with neither.

A removed sublayer is the identity on the residual stream: no bias, no LayerNorm (docs/checkpoint-formats.md §2.5; fault classes
F1 in docs/field-faults.md, F2). Decided from the IR, statically (F19).
"""
from __future__ import annotations

from prumux_compile.ir import ModelIR
from prumux_compile.passes.base import Pass


def _empty_attention(layer) -> bool:
    return layer.attention is not None and layer.attention.heads_kept == 0


def _empty_ffn(layer) -> bool:
    return layer.ffn is not None and layer.ffn.dims_kept == 0


class DropEmptySublayers(Pass):
    name = "drop-empty-sublayers"

    def applies(self, ir: ModelIR) -> bool:
        return any(_empty_attention(l) or _empty_ffn(l) or (l.attention is None and l.ffn is None)
                   for l in ir.layers)

    def apply(self, ir: ModelIR) -> tuple[str, dict]:
        attention, ffn, layers = [], [], []
        kept = []
        for layer in ir.layers:
            if _empty_attention(layer):
                layer.attention = None
                attention.append(layer.index)
            if _empty_ffn(layer):
                layer.ffn = None
                ffn.append(layer.index)
            if layer.attention is None and layer.ffn is None:
                layers.append(layer.index)
            else:
                kept.append(layer)
        ir.layers = kept
        return (f"removed {len(attention)} attention and {len(ffn)} FFN sublayers; "
                f"{len(layers)} whole layers dropped, {len(kept)} layers left",
                {"attention_removed": attention, "ffn_removed": ffn, "layers_dropped": layers,
                 "layers_left": len(kept)})
