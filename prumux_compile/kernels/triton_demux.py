"""Fused first demultiplexer layer in OpenAI Triton, with its plain PyTorch form as fallback and test oracle.

After ``fuse-demux`` (docs/checkpoint-formats.md §2.6, E4) the first index_pos demux layer is, for
mux group g with encoder state ``h_g = x[g, 0]`` ``[d']`` and instance n::

    y[g, n] = gelu(dense_1([e_n ; h_g])) = gelu(shared · h_g + const_n)       shared [D, d'], const [N, D]

i.e. ONE GEMM per group (not per instance) plus a per-instance constant, then exact (erf) GELU.
:func:`demux_first_torch` is that in PyTorch (GEMM, broadcast add, GELU: three kernels and a ``[G, D]``
intermediate); :func:`demux_first_triton` computes a ``[BLOCK_G, BLOCK_D]`` tile of ``h · sharedᵀ`` once with
``tl.dot`` (float32 accumulation; ``input_precision="ieee"`` for float32 inputs, so no TF32) and writes the N
outputs ``gelu(tile + const_n)`` from registers.

Precision: inputs ``h`` and ``shared`` are used in their dtype (fp32 / fp16 / bf16, both the same); the
constant, the sum and GELU are float32; the result has ``out_dtype`` (default: the input dtype). The PyTorch
form rounds the GEMM result to the input dtype before adding the constant (cuBLAS output dtype), so in fp16
the two differ by about one fp16 ulp of the pre-activation.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from prumux_compile.errors import InputError
from prumux_compile.kernels.triton_mux import tl, triton, triton_available

__all__ = ["demux_first_torch", "demux_first_triton", "triton_available"]


def _check(h: Tensor, shared: Tensor, const: Tensor) -> tuple[int, int, int, int]:
    if h.dim() != 2 or shared.dim() != 2 or const.dim() != 2:
        raise InputError(f"demux: expected h [G, d'], shared [D, d'], const [N, D]; got {list(h.shape)}, "
                         f"{list(shared.shape)}, {list(const.shape)}")
    g, k = h.shape
    d, k2 = shared.shape
    n, d2 = const.shape
    if k != k2 or d != d2:
        raise InputError(f"demux: widths disagree: h {list(h.shape)}, shared {list(shared.shape)}, "
                         f"const {list(const.shape)}")
    if h.dtype != shared.dtype:
        raise InputError(f"demux: h ({h.dtype}) and shared ({shared.dtype}) must have one dtype")
    return g, n, d, k


def demux_first_torch(h: Tensor, shared: Tensor, const: Tensor, out_dtype: torch.dtype | None = None) -> Tensor:
    """``gelu(h · sharedᵀ + const_n)`` for every group and instance, in PyTorch (module docstring).

    Args:
        h: encoder states at position 0, ``[G, d']`` (fp32/fp16/bf16).
        shared: ``dense_1.shared`` ``[D, d']``, same dtype as ``h``.
        const: ``dense_1.const`` ``[N, D]`` (any float dtype; used as float32).
        out_dtype: result dtype (default ``h.dtype``).

    Returns:
        ``[G, N, D]``; row ``[g, n]`` belongs to input row ``g*N + n``.

    Raises:
        InputError: shapes or dtypes that disagree.
    """
    _check(h, shared, const)
    pre = F.linear(h, shared).float()[:, None, :] + const.float()[None]
    return F.gelu(pre).to(out_dtype or h.dtype)


if triton is not None:

    @triton.jit
    def _demux_kernel(h_ptr, w_ptr, c_ptr, out_ptr, G, D, K, stride_h, stride_w,
                      N: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
                      IEEE: tl.constexpr):
        pid_g = tl.program_id(0)
        pid_d = tl.program_id(1)
        offs_g = pid_g * BLOCK_G + tl.arange(0, BLOCK_G)
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        offs_k = tl.arange(0, BLOCK_K)
        acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + offs_k
            a = tl.load(h_ptr + offs_g[:, None] * stride_h + kk[None, :],
                        mask=(offs_g[:, None] < G) & (kk[None, :] < K), other=0.0)
            b = tl.load(w_ptr + offs_d[None, :] * stride_w + kk[:, None],
                        mask=(offs_d[None, :] < D) & (kk[:, None] < K), other=0.0)
            if IEEE:
                acc = tl.dot(a, b, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)
        out_mask = (offs_g[:, None] < G) & (offs_d[None, :] < D)
        for n in tl.static_range(N):
            c = tl.load(c_ptr + n * D + offs_d, mask=offs_d < D, other=0.0).to(tl.float32)
            v = acc + c[None, :]
            y = 0.5 * v * (1.0 + tl.erf(v * 0.7071067811865476))
            tl.store(out_ptr + (offs_g[:, None] * N + n) * D + offs_d[None, :], y.to(out_ptr.dtype.element_ty),
                     mask=out_mask)


def demux_first_triton(h: Tensor, shared: Tensor, const: Tensor, out_dtype: torch.dtype | None = None, *,
                       block_g: int = 32, block_d: int = 64, block_k: int = 32) -> Tensor:
    """The fused first demux layer as one Triton kernel; contract of :func:`demux_first_torch`.

    Args:
        h, shared, const, out_dtype: as :func:`demux_first_torch`.
        block_g, block_d, block_k: tile sizes (powers of two >= 16, as ``tl.dot`` needs).

    Raises:
        InputError: shapes/dtypes that disagree, tensors not on one CUDA device, bad tile sizes.
        RuntimeError: Triton is unavailable (:func:`triton_available` gives the reason).
    """
    ok, why = triton_available(h.device)
    if not ok:
        raise RuntimeError(f"demux_first_triton: {why}")
    g, n, d, k = _check(h, shared, const)
    if any(t.device != h.device for t in (shared, const)):
        raise InputError("demux_first_triton: every tensor must be on the same CUDA device")
    for b in (block_g, block_d, block_k):
        if b < 16 or b & (b - 1):
            raise InputError(f"demux_first_triton: tile size {b} must be a power of two >= 16")
    h_c, w_c, c_c = h.contiguous(), shared.contiguous(), const.contiguous()
    out = torch.empty((g, n, d), dtype=out_dtype or h.dtype, device=h.device)
    grid = (triton.cdiv(g, block_g), triton.cdiv(d, block_d))
    _demux_kernel[grid](h_c, w_c, c_c, out, g, d, k, h_c.stride(0), w_c.stride(0), N=n, BLOCK_G=block_g,
                        BLOCK_D=block_d, BLOCK_K=block_k, IEEE=h.dtype == torch.float32, num_warps=4)
    return out
