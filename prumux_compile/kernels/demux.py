"""The demultiplexer (spec §2.6, E4): per-group encoder states -> one vector per instance."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from prumux_compile.ir import Demux
from prumux_compile.kernels.norm import frozen


class Demultiplexer(nn.Module):
    """Forward: ``x [G, R, d']`` (encoder output; R >= 1 rows, R >= N+1 for ``index``) -> ``[G*N, D]``.

    Output row ``g*N + n`` belongs to input row ``g*N + n``. Variants (spec §2.6):

    * ``index_pos``: ``h = x[:, 0]``; ``y1 = gelu(dense_1([e_n ; h]))`` (legacy: then ``LN_1``);
      ``y_k = gelu(dense_k(y)) + y`` for k = 2..K; ``z = LN_pre(gelu(pre_decoder(y))) + y``.
      Fused (E4): ``dense_1([e_n ; h]) = const_n + shared h`` — one GEMM per group, not per instance.
    * ``mlp``: ``y_n = LN_n(gelu(dense_n(h)))``; ``z_n = LN(gelu(dense_before_out_proj(y_n)))``; fused: the N
      dense_n stacked into one GEMM.
    * ``index``: ``z_n = LN(gelu(dense([x[:, n] ; x[:, N]])))``; fused: ``left x[:, n] + right x[:, N] + b``.
    """

    def __init__(self, spec: Demux, num_instances: int, eps: float):
        super().__init__()
        self.variant = spec.variant
        self.n = num_instances
        self.eps = float(eps)
        self.fused = spec.fused
        self.legacy = spec.legacy
        self.num_dense = spec.num_layers
        self.t = nn.ParameterDict({k.replace(".", "__"): frozen(v) for k, v in spec.tensors.items()})

    def _p(self, name: str) -> Tensor:
        return self.t[name.replace(".", "__")]

    def _ln(self, x: Tensor, name: str) -> Tensor:
        w = self._p(name + ".weight")
        return F.layer_norm(x, (w.shape[0],), w, self._p(name + ".bias"), self.eps)

    def forward(self, x: Tensor) -> Tensor:
        g = x.shape[0]
        n = self.n
        if self.variant == "index_pos":
            h = x[:, 0]
            if self.fused:
                y = F.gelu(F.linear(h, self._p("dense_1.shared"))[:, None, :] + self._p("dense_1.const"))
            else:
                e = self._p("demux_instance_embedding")
                u = torch.cat([e[None].expand(g, n, e.shape[1]), h[:, None, :].expand(g, n, h.shape[1])], dim=-1)
                y = F.gelu(F.linear(u, self._p("dense_1.weight"), self._p("dense_1.bias")))
            if self.legacy:
                y = self._ln(y, "layer_norm_1")
            for k in range(2, self.num_dense + 1):
                y = F.gelu(F.linear(y, self._p(f"dense_{k}.weight"), self._p(f"dense_{k}.bias"))) + y
            z = self._ln(F.gelu(F.linear(y, self._p("pre_decoder.weight"), self._p("pre_decoder.bias"))),
                         "pre_decoder_layer_norm") + y
        elif self.variant == "mlp":
            h = x[:, 0]
            if self.fused:
                y = F.gelu(F.linear(h, self._p("dense_all.weight"), self._p("dense_all.bias"))).reshape(g, n, -1)
                y = (F.layer_norm(y, (self._p("ln_all.weight").shape[-1],), None, None, self.eps)
                     * self._p("ln_all.weight") + self._p("ln_all.bias"))
            else:
                y = torch.stack([
                    self._ln(F.gelu(F.linear(h, self._p(f"dense_{i}.weight"), self._p(f"dense_{i}.bias"))), f"layer_norm_{i}")
                    for i in range(n)], dim=1)
            z = self._ln(F.gelu(F.linear(y, self._p("dense_before_out_proj.weight"),
                                         self._p("dense_before_out_proj.bias"))), "layernorm")
        else:  # index
            p = x[:, :n]
            hn = x[:, n : n + 1]
            if self.fused:
                pre = F.linear(p, self._p("dense.left")) + F.linear(hn, self._p("dense.right")) + self._p("dense.bias")
            else:
                u = torch.cat([p, hn.expand(g, n, hn.shape[-1])], dim=-1)
                pre = F.linear(u, self._p("dense.weight"), self._p("dense.bias"))
            z = self._ln(F.gelu(pre), "layer_norm")
        return z.reshape(g * n, z.shape[-1])
