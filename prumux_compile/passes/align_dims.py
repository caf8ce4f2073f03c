"""``align-dims``: zero-pad attention heads and FFN dims so GEMM widths are multiples of an alignment.

Pruning leaves widths such as 7 heads or 1531 FFN dims (field fault F16 in docs/field-faults.md: "pruned model is not faster");
tensor-core GEMMs want every dimension to be a multiple of 8 (fp16) elements. This optional pass, run after
the pruning stage, pads each layer with zeros so that

* the attention width ``h_i * dh`` is a multiple of ``multiple`` (and, optionally, the head count ``h_i`` a
  multiple of ``head_multiple``), by adding WHOLE zero heads: zero rows of Wq/Wk/Wv, zero entries of
  bq/bk/bv and zero columns of Wo;
* the FFN width ``f_i`` is a multiple of ``multiple``: zero rows of W1, zero entries of b1, zero columns
  of W2.

The hidden width d' is never padded (it feeds every LayerNorm, whose statistics would change).

Exactness (docs/checkpoint-formats.md §3, E9 "zero padding"): a padded head has q = k = 0, so its
scores are the (additive) mask only, its softmax is a proper distribution over positions and its values
are v = x·0 + 0 = 0, hence its context is exactly 0 and meets zero Wo columns. A padded FFN dim has
``gelu(x·0 + 0) = gelu(0) = 0`` and meets a zero W2 column. Both contribute exact zeros in any precision.

Padded heads get ids ``>= original heads`` and padded FFN dims ids ``>= original ffn``
(:func:`padded_heads`, :func:`padded_ffn_dims` recognise them), appended after the real ones so ids stay
ascending and unique (:func:`prumux_compile.ir.check_invariants`).
"""
from __future__ import annotations

import math

import torch

from prumux_compile.errors import InputError, IRInvariantError
from prumux_compile.ir import ModelIR
from prumux_compile.passes.base import Pass

__all__ = ["AlignDims", "padded_heads", "padded_ffn_dims", "aligned_heads", "aligned_width"]


def aligned_width(width: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``width`` (``width`` >= 0, ``multiple`` >= 1)."""
    return -(-int(width) // int(multiple)) * int(multiple)


def aligned_heads(heads: int, head_size: int, multiple: int, head_multiple: int | None = None) -> int:
    """Smallest head count ``h' >= heads`` with ``h' * head_size`` a multiple of ``multiple`` and, if given,
    ``h'`` a multiple of ``head_multiple``.

    ``h' * dh ≡ 0 (mod m)`` holds exactly when ``h'`` is a multiple of ``m / gcd(dh, m)``; both conditions
    together ask for a multiple of the lcm of the two step sizes.
    """
    step = int(multiple) // math.gcd(int(head_size), int(multiple))
    if head_multiple is not None:
        step = step * int(head_multiple) // math.gcd(step, int(head_multiple))
    return aligned_width(heads, step)


def padded_heads(ir: ModelIR) -> dict[int, list[int]]:
    """Layer index -> ids of zero heads added by ``align-dims`` (ids >= ``ir.original["heads"]``)."""
    h = int(ir.original["heads"])
    out = {}
    for layer in ir.layers:
        if layer.attention is not None:
            extra = [i for i in layer.attention.head_ids if i >= h]
            if extra:
                out[layer.index] = extra
    return out


def padded_ffn_dims(ir: ModelIR) -> dict[int, int]:
    """Layer index -> number of zero FFN dims added by ``align-dims`` (ids >= ``ir.original["ffn"]``)."""
    f = int(ir.original["ffn"])
    out = {}
    for layer in ir.layers:
        if layer.ffn is not None:
            n = sum(1 for i in layer.ffn.dim_ids if i >= f)
            if n:
                out[layer.index] = n
    return out


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([t, t.new_zeros((rows,) + tuple(t.shape[1:]))], dim=0)


def _pad_cols(t: torch.Tensor, cols: int) -> torch.Tensor:
    return torch.cat([t, t.new_zeros((t.shape[0], cols))], dim=1)


class AlignDims(Pass):
    """Zero-pad heads and FFN dims (module docstring).

    Args:
        multiple: alignment in elements of the attention width ``h*dh`` and of the FFN width (default 8,
            the fp16 tensor-core granule); >= 1.
        head_multiple: optional alignment of the head COUNT (e.g. 2 or 4 for fused attention kernels that
            process head pairs); None = only the width rule.
        heads / ffn: pad that kind of sublayer (both by default).

    Raises:
        InputError: ``multiple`` or ``head_multiple`` < 1.
        IRInvariantError (from :meth:`run`): the IR still holds masks (run the pruning passes first).
    """

    name = "align-dims"

    def __init__(self, multiple: int = 8, head_multiple: int | None = None, *, heads: bool = True,
                 ffn: bool = True):
        if int(multiple) < 1:
            raise InputError(f"align-dims: multiple={multiple}: must be >= 1")
        if head_multiple is not None and int(head_multiple) < 1:
            raise InputError(f"align-dims: head_multiple={head_multiple}: must be >= 1 or None")
        self.multiple = int(multiple)
        self.head_multiple = None if head_multiple is None else int(head_multiple)
        self.heads = bool(heads)
        self.ffn = bool(ffn)

    def _targets(self, ir: ModelIR):
        """Per layer: (layer, heads to add, FFN dims to add)."""
        out = []
        for layer in ir.layers:
            a, f = layer.attention, layer.ffn
            add_h = 0
            if self.heads and a is not None:
                add_h = aligned_heads(a.heads, a.head_size, self.multiple, self.head_multiple) - a.heads
            add_f = aligned_width(f.dims, self.multiple) - f.dims if self.ffn and f is not None else 0
            out.append((layer, add_h, add_f))
        return out

    def applies(self, ir: ModelIR) -> bool:
        """True when some layer needs padding.

        Raises:
            IRInvariantError: the IR still holds soft or keep masks (padding is defined on the pruned IR).
        """
        if ir.masks is not None or ir.hidden_keep is not None or any(
                (l.attention is not None and l.attention.head_keep is not None)
                or (l.ffn is not None and l.ffn.dim_keep is not None) for l in ir.layers):
            raise IRInvariantError("align-dims: the IR still holds masks or keep masks; run the pruning passes "
                                   "(fold-masks .. drop-empty-sublayers) first")
        return any(h or f for _, h, f in self._targets(ir))

    def apply(self, ir: ModelIR) -> tuple[str, dict]:
        per_layer = {}
        for layer, add_h, add_f in self._targets(ir):
            entry = {}
            a = layer.attention
            if add_h:
                rows = add_h * a.head_size
                a.wq, a.wk, a.wv = _pad_rows(a.wq, rows), _pad_rows(a.wk, rows), _pad_rows(a.wv, rows)
                a.bq, a.bk, a.bv = _pad_rows(a.bq, rows), _pad_rows(a.bk, rows), _pad_rows(a.bv, rows)
                a.wo = _pad_cols(a.wo, rows)
                start = max(int(ir.original["heads"]), max(a.head_ids) + 1)
                a.head_ids = list(a.head_ids) + list(range(start, start + add_h))
                entry["heads"] = {"before": a.heads - add_h, "after": a.heads}
            f = layer.ffn
            if add_f:
                f.w1, f.b1, f.w2 = _pad_rows(f.w1, add_f), _pad_rows(f.b1, add_f), _pad_cols(f.w2, add_f)
                start = max(int(ir.original["ffn"]), max(f.dim_ids) + 1)
                f.dim_ids = list(f.dim_ids) + list(range(start, start + add_f))
                entry["ffn"] = {"before": f.dims - add_f, "after": f.dims}
            if entry:
                per_layer[layer.index] = entry
        nh = sum(e["heads"]["after"] - e["heads"]["before"] for e in per_layer.values() if "heads" in e)
        nf = sum(e["ffn"]["after"] - e["ffn"]["before"] for e in per_layer.values() if "ffn" in e)
        summary = (f"padded {nh} zero heads and {nf} zero FFN dims in {len(per_layer)} layers "
                   f"(multiple {self.multiple}" + (f", head multiple {self.head_multiple})" if self.head_multiple
                                                   else ")"))
        return summary, {"multiple": self.multiple, "head_multiple": self.head_multiple, "layers": per_layer,
                         "padded_heads": nh, "padded_ffn_dims": nf}
