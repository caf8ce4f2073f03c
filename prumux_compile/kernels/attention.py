"""Self-attention with a per-layer head count (docs/checkpoint-formats.md §2.5), export-friendly.

Reshapes use the layer's own head count as a constant (that is what lets ONNX Runtime fuse attention on pruned
layers; field fault F6 in docs/field-faults.md). No data-dependent branches, no in-place writes to inputs. Compute-dtype policy: Q/K/V
and output projections in the compute dtype; scores, mask and softmax in float32 (:mod:`.norm`).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from prumux_compile.ir import Attention
from prumux_compile.kernels.norm import LayerNorm, f32, frozen, gemm

#: Attention implementations: ``"math"`` (explicit float32 scores and softmax; what is exported) and ``"sdpa"``
#: (``F.scaled_dot_product_attention``, whose fused kernels keep the softmax in float32 registers; a runtime
#: kernel choice of the CUDA engine).
ATTENTION_IMPLS = ("math", "sdpa")


class SelfAttention(nn.Module):
    """``x = LN(x + softmax(Q Kᵀ · scale + mask) V Woᵀ + bo)`` for one layer with ``heads`` heads.

    Args:
        spec: the layer's :class:`~prumux_compile.ir.Attention` (``heads >= 1``).
        eps: LayerNorm epsilon.
        hidden_keep: bool ``[d']`` or None (masked LayerNorm before ``prune-hidden``).
        compute_dtype: dtype of the projections (module docstring).

    Attribute ``impl``: one of :data:`ATTENTION_IMPLS` (default ``"math"``).

    Forward: ``x [B, L, d']`` float32, ``mask_add [B, 1, 1, L]`` additive mask or None, ``out_rows`` k or None
    (compute queries and everything after them for the first k positions only; docs/checkpoint-formats.md E5). Returns
    ``[B, L or k, d']``.
    """

    def __init__(self, spec: Attention, eps: float, hidden_keep: Tensor | None = None,
                 compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        cd = compute_dtype
        self.heads = spec.heads
        self.head_size = spec.head_size
        self.scale = 1.0 if spec.q_prescaled else 1.0 / math.sqrt(spec.head_size)
        self.impl = "math"
        self.wq, self.bq = frozen(spec.wq, cd), frozen(spec.bq, cd)
        self.wk, self.bk = frozen(spec.wk, cd), frozen(spec.bk, cd)
        self.wv, self.bv = frozen(spec.wv, cd), frozen(spec.bv, cd)
        self.wo, self.bo = frozen(spec.wo, cd), frozen(spec.bo, cd)
        if spec.head_keep is not None:
            self.register_buffer("head_keep", spec.head_keep.to(torch.float32).view(1, -1, 1, 1), persistent=False)
        else:
            self.head_keep = None
        self.ln = LayerNorm(spec.ln_weight, spec.ln_bias, eps, hidden_keep)

    def _split(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, self.head_size).transpose(1, 2)

    def forward(self, x: Tensor, mask_add: Tensor | None = None, out_rows: int | None = None) -> Tensor:
        xq = x if out_rows is None else x[:, :out_rows]
        q = self._split(gemm(xq, self.wq, self.bq))
        k = self._split(gemm(x, self.wk, self.bk))
        v = self._split(gemm(x, self.wv, self.bv))
        if self.impl == "sdpa" and self.head_keep is None:
            mask = mask_add.to(v.dtype) if mask_add is not None else None
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        else:
            scores = torch.matmul(f32(q), f32(k).transpose(-1, -2))
            if self.scale != 1.0:
                scores = scores * self.scale
            if mask_add is not None:
                scores = scores + mask_add
            probs = torch.softmax(scores, dim=-1)
            ctx = torch.matmul(probs if probs.dtype == v.dtype else probs.to(v.dtype), v)
        if self.head_keep is not None:
            ctx = ctx * (self.head_keep if self.head_keep.dtype == ctx.dtype else self.head_keep.to(ctx.dtype))
        b, _, n, _ = ctx.shape
        ctx = ctx.transpose(1, 2).reshape(b, n, self.heads * self.head_size)
        return self.ln(xq + f32(gemm(ctx, self.wo, self.bo)))
