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


def _flops(*, length: int, n: int, d: int, dh: int, layers, demux, D: int, C: int, pooler: bool) -> float:
    """FLOPs per input sequence of a geometry. ``layers``: ``(heads, ffn dims, rows computed)`` per computed layer;
    ``demux``: ``(variant, fused, dense layers)`` or None."""
    total = 0.0
    for heads, ffn, rows in layers:
        if heads > 0:
            w = heads * dh
            total += 2 * length * d * w * 2  # keys, values: every position
            total += 2 * rows * d * w  # queries
            total += 2 * rows * length * w * 2  # scores and context
            total += 2 * rows * w * d  # output projection
        if ffn > 0:
            total += 2 * 2 * rows * d * ffn
    total /= n
    if demux is not None:
        variant, fused, num_layers = demux
        if variant == "index_pos":
            first = 2 * d * D / n if fused else 2 * 2 * d * D
            total += first + (num_layers - 1) * 2 * D * D + 2 * D * D
        elif variant == "mlp":
            total += 2 * d * D + 2 * D * D
        else:
            total += (2 * d * D + 2 * d * D / n) if fused else 2 * 2 * d * D
    if pooler:
        total += 2 * d * D
    total += 2 * D * C
    return float(total)


def _length(ir: ModelIR, seq_len: int | None) -> int:
    length = seq_len or ir.seq_len or 128
    if ir.demux is not None and ir.demux.variant == "index":
        length += ir.num_instances + 1
    return length


def flops_per_sequence(ir: ModelIR, seq_len: int | None = None) -> float:
    """Floating-point operations (2 per multiply-add, GEMMs and attention products only) per INPUT sequence.

    A multiplexed model runs one encoder pass per group of N sequences, so its encoder cost is divided by N.
    Honours keep masks (masked heads/dims are not counted) and ``trim-last-layer`` rows.

    Args:
        seq_len: sequence length (default: the IR's compiled length, else 128).
    """
    length = _length(ir, seq_len)
    layers = [(layer.attention.heads_kept if layer.attention is not None else 0,
               layer.ffn.dims_kept if layer.ffn is not None else 0, layer.out_rows or length) for layer in ir.layers]
    demux = (ir.demux.variant, ir.demux.fused, ir.demux.num_layers) if ir.demux is not None else None
    return _flops(length=length, n=ir.num_instances, d=ir.hidden_kept(), dh=ir.head_size, layers=layers, demux=demux,
                  D=int(ir.classifier[0].shape[1]), C=ir.num_labels, pooler=ir.pooler is not None)


def unpruned_flops_per_sequence(ir: ModelIR, seq_len: int | None = None) -> float:
    """:func:`flops_per_sequence` of the model before pruning: the ORIGINAL geometry of ``config.json``
    (``ir.original``: every layer with all heads and FFN dims at the original hidden size, no folding or row
    trimming), with ``ir``'s N, demultiplexer, pooler and classifier."""
    o = ir.original
    length = _length(ir, seq_len)
    demux = (ir.demux.variant, False, ir.demux.num_layers) if ir.demux is not None else None
    return _flops(length=length, n=ir.num_instances, d=o["hidden"], dh=ir.head_size,
                  layers=[(o["heads"], o["ffn"], length)] * o["layers"], demux=demux, D=int(ir.classifier[0].shape[1]),
                  C=ir.num_labels, pooler=ir.pooler is not None)


def unpruned_params(ir: ModelIR) -> dict[str, int]:
    """Parameters of the model before pruning (``{"total", "encoder"}``), from the ORIGINAL sizes of ``config.json``
    (``ir.original``) and the table rows, N, demultiplexer, pooler and classifier of ``ir``; counted as
    :meth:`ModelIR.total_params` counts a loaded, unpruned checkpoint (weights, biases, LayerNorms; unfused demux)."""
    o = ir.original
    L, d, H, F = o["layers"], o["hidden"], o["heads"], o["ffn"]
    w = H * ir.head_size
    e = ir.embeddings
    rows = e.word.shape[0] + e.position.shape[0] + e.token_type.shape[0]
    embeddings = rows * d + 2 * d
    attention = 3 * (w * d + w) + d * w + d + 2 * d
    ffn = F * d + F + d * F + d + 2 * d
    encoder = L * (attention + ffn)
    D, C, n = int(ir.classifier[0].shape[1]), ir.num_labels, ir.num_instances
    total = embeddings + encoder + C * D + C
    if ir.mux is not None:
        total += n * d * d if ir.mux.variant == "random_ortho" else n * d
    if ir.demux is not None:
        variant, k = ir.demux.variant, ir.demux.num_layers
        if variant == "index_pos":
            total += n * d + 2 * d * D + D + (k - 1) * (D * D + D) + (2 * D if ir.demux.legacy else 0) + D * D + 3 * D
        elif variant == "mlp":
            total += n * (d * D + 3 * D) + D * D + 3 * D
        else:
            total += 2 * d * D + 3 * D
    if ir.pooler is not None:
        total += D * d + D
    return {"total": int(total), "encoder": int(encoder)}


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
    """Machine-readable summary of a compilation (what ``inspect --json`` prints).

    ``params`` / ``encoder_params`` / ``flops_per_sequence`` compare the UNPRUNED model (``"before"``: the original
    geometry of ``config.json``, :func:`unpruned_params`, :func:`unpruned_flops_per_sequence`) with the compiled one
    (``"after"``); ``stored`` holds the parameters and FLOPs of ``before`` as the checkpoint stores it (a compressed
    checkpoint is already pruned; a masked one is full size), and ``geometry`` the sizes on both sides.
    """
    unpruned = unpruned_params(after)
    o = after.original
    return {
        "geometry": {
            "before": {"layers": o["layers"], "hidden": o["hidden"], "heads": o["heads"] * o["layers"],
                       "ffn": o["ffn"] * o["layers"]},
            "after": {"layers": len(after.layers), "hidden": after.hidden_kept(),
                      "heads": sum(r["heads"] for r in after.kept_structure()),
                      "ffn": sum(r["ffn"] for r in after.kept_structure())},
        },
        "stored": {"params": before.total_params(), "flops_per_sequence": flops_per_sequence(before)},
        "family": after.family,
        "num_instances": after.num_instances,
        "muxing_variant": after.mux.variant if after.mux else None,
        "demuxing_variant": after.demux.variant if after.demux else None,
        "seq_len": after.seq_len,
        "hidden": {"kept": after.hidden_kept(), "total": after.original["hidden"]},
        "layers": layer_table(after),
        "layers_computed": len(after.layers),
        "params": {"before": unpruned["total"], "after": after.total_params()},
        "encoder_params": {"before": unpruned["encoder"], "after": after.encoder_params()},
        "flops_per_sequence": {"before": unpruned_flops_per_sequence(after), "after": flops_per_sequence(after)},
        "sparsity": cofi_sparsity(after),
    }
