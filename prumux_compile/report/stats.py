"""Model statistics from the IR: per-layer structure, parameters, FLOPs per sequence, CoFi sparsity."""
from __future__ import annotations

from prumux_compile.ir import ModelIR


def cofi_sparsity(ir: ModelIR) -> float:
    """Sparsity as CoFi's L0 module counts it (docs/checkpoint-formats.md §6, upstream ``models/l0_module.py``).

    ``prunable = L*(4d² + 4d) + L*(2dF + 5d)`` with the ORIGINAL depth L, hidden size d and FFN width F;
    ``remaining = 4·dh·Σ_i h_i·d' + 2·Σ_i f_i·d'`` (no biases; 256·Σh_i·d' for dh = 64);
    ``sparsity = 1 - remaining / prunable``. Embeddings, mux/demux and classifier are excluded.
    """
    o = ir.original
    L, d, F = o["layers"], o["hidden"], o["ffn"]
    prunable = L * (4 * d * d + 4 * d) + L * (2 * d * F + 5 * d)
    dprime = ir.hidden_kept()
    rows = ir.kept_structure()
    remaining = 4 * ir.head_size * sum(r["heads"] for r in rows) * dprime + 2 * sum(r["ffn"] for r in rows) * dprime
    return 1.0 - remaining / prunable


def flops_per_sequence(ir: ModelIR, seq_len: int | None = None) -> float:
    """Floating-point operations (2 per multiply-add, GEMMs and attention products only) per INPUT sequence.

    A multiplexed model runs one encoder pass per group of N sequences, so its encoder cost is divided by N.
    Honours keep masks (masked heads/dims are not counted) and ``trim-last-layer`` rows.

    Args:
        seq_len: sequence length (default: the IR's compiled length, else 128).
    """
    length = seq_len or ir.seq_len or 128
    n = ir.num_instances
    if ir.demux is not None and ir.demux.variant == "index":
        length += n + 1
    d = ir.hidden_kept()
    dh = ir.head_size
    total = 0.0
    for layer in ir.layers:
        rows = layer.out_rows or length
        a = layer.attention
        if a is not None and a.heads_kept > 0:
            w = a.heads_kept * dh
            total += 2 * length * d * w * 2  # keys, values: every position
            total += 2 * rows * d * w  # queries
            total += 2 * rows * length * w * 2  # scores and context
            total += 2 * rows * w * d  # output projection
        f = layer.ffn
        if f is not None and f.dims_kept > 0:
            total += 2 * 2 * rows * d * f.dims_kept
    total /= n
    C = ir.num_labels
    D = ir.classifier[0].shape[1]
    if ir.demux is not None:
        t = ir.demux.tensors
        if ir.demux.variant == "index_pos":
            first = 2 * d * D / n if ir.demux.fused else 2 * 2 * d * D
            total += first + (ir.demux.num_layers - 1) * 2 * D * D + 2 * D * D
        elif ir.demux.variant == "mlp":
            total += 2 * d * D + 2 * D * D
        else:
            total += (2 * d * D + 2 * d * D / n) if ir.demux.fused else 2 * 2 * d * D
    if ir.pooler is not None:
        total += 2 * d * D
    total += 2 * D * C
    return float(total)


def layer_table(ir: ModelIR) -> list[dict]:
    """One row per ORIGINAL layer: heads kept / H, FFN dims kept / F, and which sublayers are removed."""
    H, F = ir.original["heads"], ir.original["ffn"]
    out = []
    for row in ir.kept_structure():
        removed = [name for name, k in (("attention", row["heads"]), ("ffn", row["ffn"])) if k == 0]
        out.append({"layer": row["layer"], "heads": row["heads"], "heads_total": H, "head_ids": row["head_ids"],
                    "ffn": row["ffn"], "ffn_total": F, "removed": removed})
    return out


def summary(before: ModelIR, after: ModelIR) -> dict:
    """Machine-readable summary of a compilation (what ``inspect --json`` prints)."""
    return {
        "family": after.family,
        "num_instances": after.num_instances,
        "muxing_variant": after.mux.variant if after.mux else None,
        "demuxing_variant": after.demux.variant if after.demux else None,
        "seq_len": after.seq_len,
        "hidden": {"kept": after.hidden_kept(), "total": after.original["hidden"]},
        "layers": layer_table(after),
        "layers_computed": len(after.layers),
        "params": {"before": before.total_params(), "after": after.total_params()},
        "encoder_params": {"before": before.encoder_params(), "after": after.encoder_params()},
        "flops_per_sequence": {"before": flops_per_sequence(before), "after": flops_per_sequence(after)},
        "sparsity": cofi_sparsity(after),
    }
