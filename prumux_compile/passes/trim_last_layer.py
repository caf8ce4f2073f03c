"""``trim-last-layer``: the last encoder layer computes only the rows its reader consumes (docs/checkpoint-formats.md E5).

The demultiplexer (index_pos, mlp) and the pooler read position 0; the ``index`` demultiplexer reads
positions 0..N. The last layer still needs keys and values of every position, but queries, softmax rows,
the output projection, FFN and LayerNorms only for those rows. Exact (all row-wise).
"""
from __future__ import annotations

from prumux_compile.ir import ModelIR
from prumux_compile.passes.base import Pass


def rows_read(ir: ModelIR) -> int:
    """Positions of the final hidden states that the head reads (1, or N+1 for the index demux)."""
    if ir.demux is not None and ir.demux.variant == "index":
        return ir.num_instances + 1
    return 1


class TrimLastLayer(Pass):
    name = "trim-last-layer"

    def applies(self, ir: ModelIR) -> bool:
        return bool(ir.layers) and ir.layers[-1].out_rows is None and ir.hidden_keep is None

    def apply(self, ir: ModelIR) -> tuple[str, dict]:
        k = rows_read(ir)
        last = ir.layers[-1]
        last.out_rows = k
        return f"layer {last.index} computes {k} of its rows", {"layer": last.index, "rows": k}
