"""Feed-forward sublayer and the encoder layer (docs/checkpoint-formats.md §2.5); compute-dtype policy of
:mod:`.norm` (the two FFN GEMMs in the compute dtype, residual and LayerNorm in float32)."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from prumux_compile.ir import FFN, Layer
from prumux_compile.kernels.activations import activation_function
from prumux_compile.kernels.attention import SelfAttention
from prumux_compile.kernels.norm import LayerNorm, f32, frozen, gemm


class FeedForward(nn.Module):
    """``x = LN(x + act(x W1ᵀ + b1) W2ᵀ + b2)``; ``x [B, L, d']`` -> same shape. ``act`` is ``config.hidden_act``
    (:func:`~prumux_compile.kernels.activations.activation_function`; exact erf GELU by default)."""

    def __init__(self, spec: FFN, eps: float, hidden_keep: Tensor | None = None, activation: str = "gelu",
                 compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.activation = activation
        self.act = activation_function(activation)
        self.w1, self.b1 = frozen(spec.w1, compute_dtype), frozen(spec.b1, compute_dtype)
        self.w2, self.b2 = frozen(spec.w2, compute_dtype), frozen(spec.b2, compute_dtype)
        if spec.dim_keep is not None:
            self.register_buffer("dim_keep", spec.dim_keep.to(torch.float32), persistent=False)
        else:
            self.dim_keep = None
        self.ln = LayerNorm(spec.ln_weight, spec.ln_bias, eps, hidden_keep)

    def forward(self, x: Tensor) -> Tensor:
        u = self.act(gemm(x, self.w1, self.b1))
        if self.dim_keep is not None:
            u = u * (self.dim_keep if self.dim_keep.dtype == u.dtype else self.dim_keep.to(u.dtype))
        return self.ln(x + f32(gemm(u, self.w2, self.b2)))


class EncoderLayer(nn.Module):
    """One layer; a removed sublayer (None, or nothing kept) is the identity — decided here, at build time
    (fault classes F1 in docs/field-faults.md, F2, F19: no data-dependent branch reaches the graph).

    Forward: ``x [B, L, d']``, ``mask_add`` or None -> ``[B, L or out_rows, d']``.
    """

    def __init__(self, spec: Layer, eps: float, hidden_keep: Tensor | None = None, activation: str = "gelu",
                 compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        a, f = spec.attention, spec.ffn
        cd = compute_dtype
        self.attention = SelfAttention(a, eps, hidden_keep, cd) if a is not None and a.heads_kept > 0 else None
        self.ffn = FeedForward(f, eps, hidden_keep, activation, cd) if f is not None and f.dims_kept > 0 else None
        self.out_rows = spec.out_rows

    def forward(self, x: Tensor, mask_add: Tensor | None = None) -> Tensor:
        if self.attention is not None:
            x = self.attention(x, mask_add, self.out_rows)
        elif self.out_rows is not None:
            x = x[:, : self.out_rows]
        if self.ffn is not None:
            x = self.ffn(x)
        return x
