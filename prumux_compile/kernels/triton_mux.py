"""Fused multiplexer in OpenAI Triton, with its plain PyTorch form as fallback and test oracle.

After ``fuse-mux`` (docs/checkpoint-formats.md E2, E3) a hadamard multiplexer is, per mux group g and
position l (``x̂ = LN_noaffine``, ``c_l = Pos[l] + Type[0]``)::

    y_n   = word[ids[gN + n, l]] + c_l                       n = 0..N-1       (pass-1 embeddings, E2)
    M     = sum_n x̂(y_n) ⊙ scale_n + shift                    scale [N, d'], shift [d']   (E3)
    x0    = LN(M + c_l; gamma, beta)                                          (pass-2 embeddings, docs/checkpoint-formats.md §2.4)

:func:`mux_embed_torch` computes exactly that with PyTorch ops (the same arithmetic as
:class:`prumux_compile.kernels.mux.MuxEmbedding` in its fused form). :func:`mux_embed_triton` does it in one
kernel: one program per (g, l) gathers the N token rows, normalises each in registers, accumulates the
Hadamard mean and (``fuse_ln2=True``) applies the pass-2 LayerNorm, writing only the muxed row ``[d']``
— the N pass-1 rows never reach memory. All statistics and sums are float32 (field fault F8 in docs/field-faults.md) whatever the
output dtype.

``import triton`` happens when this module is imported, and this module is only imported by the CUDA engine
when it needs it; without Triton (or without CUDA) :func:`triton_available` says why and callers use the
PyTorch form. Under Triton's interpreter (``TRITON_INTERPRET=1`` set before ``triton`` is first imported) the
kernels run on CPU tensors: that is how CI checks them against their PyTorch forms without a GPU.
"""
from __future__ import annotations

import os

import torch
from torch import Tensor
from torch.nn import functional as F

from prumux_compile.errors import InputError

try:  # optional: OpenAI Triton (ships with CUDA builds of PyTorch)
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the machine
    triton = None
    tl = None

__all__ = ["mux_embed_torch", "mux_embed_triton", "triton_available"]


def triton_available(device: torch.device | str | None = None) -> tuple[bool, str]:
    """``(True, "triton <version>")`` when Triton kernels can run on ``device`` (default: CUDA), else
    ``(False, reason)``."""
    if triton is None:
        return False, "Python package 'triton' is not installed"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, f"triton {triton.__version__} (interpreter mode: kernels run on the CPU)"
    dev = torch.device(device) if device is not None else torch.device("cuda")
    if dev.type != "cuda":
        return False, f"Triton kernels need a CUDA device, got {dev}"
    if not torch.cuda.is_available():
        return False, "no CUDA device (torch.cuda.is_available() is False)"
    return True, f"triton {triton.__version__}"


def _check(ids: Tensor, word: Tensor, const: Tensor, scale: Tensor, shift: Tensor, ln2) -> tuple[int, int, int]:
    if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
        raise InputError(f"mux: ids must be int64/int32 [G*N, L], got {ids.dtype} {list(ids.shape)}")
    if scale.dim() != 2:
        raise InputError(f"mux: scale must be [N, d'] (hadamard variants only), got {list(scale.shape)}")
    n, d = scale.shape
    rows, length = ids.shape
    if rows % n:
        raise InputError(f"mux: {rows} rows is not a multiple of N={n}")
    if word.dim() != 2 or word.shape[1] != d or tuple(const.shape) != (length, d) or tuple(shift.shape) != (d,):
        raise InputError(f"mux: widths disagree: word {list(word.shape)}, const {list(const.shape)} (expected "
                         f"[{length}, {d}]), shift {list(shift.shape)}, scale {list(scale.shape)}")
    if ln2 is not None and (tuple(ln2[0].shape) != (d,) or tuple(ln2[1].shape) != (d,)):
        raise InputError(f"mux: pass-2 LayerNorm parameters must be [{d}]")
    return rows // n, length, d


def mux_embed_torch(ids: Tensor, word: Tensor, const: Tensor, scale: Tensor, shift: Tensor, eps: float,
                    ln2: tuple[Tensor, Tensor] | None = None, out_dtype: torch.dtype | None = None) -> Tensor:
    """The fused multiplexer in plain PyTorch (module docstring), float32 throughout.

    Args:
        ids: token ids, int64/int32 ``[G*N, L]`` (row gN+n = instance n of group g).
        word: word embeddings ``[V, d']`` (any float dtype; read as float32).
        const: ``Pos[:L] + Type[0]``, ``[L, d']``.
        scale: ``Mux.fused_scale`` ``[N, d']`` (gamma ⊙ v_n / N).
        shift: ``Mux.fused_shift`` ``[d']`` (beta ⊙ mean_n v_n).
        eps: LayerNorm epsilon (both LayerNorms).
        ln2: ``(gamma, beta)`` ``[d']`` of the pass-2 LayerNorm, or None to return ``M`` itself.
        out_dtype: dtype of the result (default float32).

    Returns:
        ``[G, L, d']``: ``x0`` (with ``ln2``) or ``M``.

    Raises:
        InputError: shapes that disagree (message names them).
    """
    g, length, d = _check(ids, word, const, scale, shift, ln2)
    n = scale.shape[0]
    c = const.float()
    y = F.embedding(ids.long(), word.float()) + c
    xhat = F.layer_norm(y, (d,), None, None, float(eps)).reshape(g, n, length, d)
    m = (xhat * scale.float()[None, :, None, :]).sum(1) + shift.float()
    if ln2 is not None:
        m = F.layer_norm(m + c, (d,), ln2[0].float(), ln2[1].float(), float(eps))
    return m.to(out_dtype or torch.float32)


if triton is not None:

    @triton.jit
    def _mux_kernel(ids_ptr, word_ptr, const_ptr, scale_ptr, shift_ptr, w2_ptr, b2_ptr, out_ptr,
                    L, D, word_stride, eps,
                    N: tl.constexpr, BLOCK_D: tl.constexpr, FUSE_LN2: tl.constexpr):
        pid = tl.program_id(0)
        g = pid // L
        pos = pid % L
        offs = tl.arange(0, BLOCK_D)
        mask = offs < D
        c = tl.load(const_ptr + pos * D + offs, mask=mask, other=0.0).to(tl.float32)
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for n in tl.static_range(N):
            tok = tl.load(ids_ptr + (g * N + n) * L + pos).to(tl.int64)
            y = tl.load(word_ptr + tok * word_stride + offs, mask=mask, other=0.0).to(tl.float32) + c
            mean = tl.sum(y, axis=0) / D
            yc = tl.where(mask, y - mean, 0.0)
            var = tl.sum(yc * yc, axis=0) / D
            s = tl.load(scale_ptr + n * D + offs, mask=mask, other=0.0).to(tl.float32)
            acc += yc * tl.rsqrt(var + eps) * s
        acc += tl.load(shift_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if FUSE_LN2:
            z = tl.where(mask, acc + c, 0.0)
            mean2 = tl.sum(z, axis=0) / D
            zc = tl.where(mask, z - mean2, 0.0)
            var2 = tl.sum(zc * zc, axis=0) / D
            w2 = tl.load(w2_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            b2 = tl.load(b2_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            acc = zc * tl.rsqrt(var2 + eps) * w2 + b2
        tl.store(out_ptr + pid * D + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def mux_embed_triton(ids: Tensor, word: Tensor, const: Tensor, scale: Tensor, shift: Tensor, eps: float,
                     ln2: tuple[Tensor, Tensor] | None = None, out_dtype: torch.dtype | None = None) -> Tensor:
    """The fused multiplexer as one Triton kernel; same contract and result as :func:`mux_embed_torch`
    (float32 arithmetic; differences are float32 rounding only).

    Grid: one program per (group, position), ``BLOCK_D`` = next power of two >= d'.

    Raises:
        InputError: shapes that disagree, or tensors not on one CUDA device.
        RuntimeError: Triton is unavailable (:func:`triton_available` gives the reason).
    """
    ok, why = triton_available(ids.device)
    if not ok:
        raise RuntimeError(f"mux_embed_triton: {why}")
    g, length, d = _check(ids, word, const, scale, shift, ln2)
    n = scale.shape[0]
    tensors = [ids, word, const, scale, shift] + (list(ln2) if ln2 is not None else [])
    if any(t.device != ids.device for t in tensors):
        raise InputError("mux_embed_triton: every tensor must be on the same CUDA device")
    ids_c, word_c = ids.contiguous(), word.contiguous()
    const_c, scale_c, shift_c = const.contiguous(), scale.contiguous(), shift.contiguous()
    w2, b2 = (ln2[0].contiguous(), ln2[1].contiguous()) if ln2 is not None else (shift_c, shift_c)
    out = torch.empty((g, length, d), dtype=out_dtype or torch.float32, device=ids.device)
    block = triton.next_power_of_2(d)
    warps = 4 if block <= 1024 else 8
    _mux_kernel[(g * length,)](ids_c, word_c, const_c, scale_c, shift_c, w2, b2, out, length, d,
                                word_c.stride(0), float(eps), N=n, BLOCK_D=block, FUSE_LN2=ln2 is not None,
                                num_warps=warps)
    return out
