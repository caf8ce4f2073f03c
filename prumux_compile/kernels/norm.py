"""LayerNorm helpers shared by the compiled modules."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class LayerNorm(nn.Module):
    """LayerNorm over the last axis ``[..., d']`` (float32 statistics).

    With ``keep`` (bool ``[d']``) the statistics are taken over the kept dims only and the pruned dims are set
    to exactly 0 — CoFi's LayerNorm under a binary ``hidden_z`` (spec §2.5, E7). ``keep`` only exists before
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


def frozen(t: Tensor) -> nn.Parameter:
    """A non-trainable parameter holding a copy of ``t``."""
    return nn.Parameter(t.detach().clone(), requires_grad=False)
