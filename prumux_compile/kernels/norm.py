"""LayerNorm and the compute-dtype policy shared by the compiled modules.

Compute-dtype policy (field fault F8 in docs/field-faults.md): the compiled model runs its GEMMs (the linear layers of attention, FFN,
demultiplexer) in a compute dtype ``cd`` (float32, float16 or bfloat16; weights stored in ``cd``) and keeps
everything else in float32: the residual stream, every LayerNorm, the attention scores and softmax, the
multiplexer's statistics and sums, the embeddings, pooler and classifier. With ``cd = float32`` the casts below
are Python-level no-ops, so the exported graph is unchanged.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class LayerNorm(nn.Module):
    """LayerNorm over the last axis ``[..., d']`` (float32 statistics).

    With ``keep`` (bool ``[d']``) the statistics are taken over the kept dims only and the pruned dims are set
    to exactly 0 — CoFi's LayerNorm under a binary ``hidden_z`` (docs/checkpoint-formats.md §2.5, E7). ``keep`` only exists before
    the ``prune-hidden`` pass; the final compiled model uses the plain form (ONNX ``LayerNormalization``).
    """

    def __init__(self, weight: Tensor, bias: Tensor, eps: float, keep: Tensor | None = None):
        super().__init__()
        self.weight = nn.Parameter(weight.clone(), requires_grad=False)
        self.bias = nn.Parameter(bias.clone(), requires_grad=False)
        self.eps = float(eps)
        if keep is not None:
            self.register_buffer("keep", keep.to(torch.float32), persistent=False)
            self.count = float(keep.sum())
        else:
            self.keep = None

    def forward(self, x: Tensor) -> Tensor:
        if self.keep is None:
            return F.layer_norm(x, (self.weight.shape[0],), self.weight, self.bias, self.eps)
        m = self.keep
        mean = (x * m).sum(-1, keepdim=True) / self.count
        var = (((x - mean) * m) ** 2).sum(-1, keepdim=True) / self.count
        return ((x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias) * m


def frozen(t: Tensor, dtype: torch.dtype | None = None) -> nn.Parameter:
    """A non-trainable parameter holding a copy of ``t`` (converted to ``dtype`` when given)."""
    t = t.detach()
    return nn.Parameter(t.to(dtype).clone() if dtype is not None else t.clone(), requires_grad=False)


def f32(t: Tensor) -> Tensor:
    """``t`` up-cast to float32 when it is float16 / bfloat16; otherwise ``t`` itself (no op, nothing traced: a
    float32 model stays float32, a model converted with ``.double()`` stays float64)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def gemm(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """``x Wᵀ + b`` in the weight's dtype (the compute dtype): ``x`` is cast when its dtype differs. The result
    has the weight's dtype; callers bring it back to float32 (:func:`f32`) where it joins the residual stream."""
    if x.dtype != w.dtype:
        x = x.to(w.dtype)
    return F.linear(x, w, b)
