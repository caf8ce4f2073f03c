"""The demultiplexer (docs/checkpoint-formats.md §2.6, E4): per-group encoder states -> one vector per instance.

Compute-dtype policy (:mod:`.norm`): the dense layers in the compute dtype, LayerNorms, residual sums and the
per-instance constants in float32; the output is float32."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from prumux_compile.ir import Demux
from prumux_compile.kernels.norm import f32, frozen, gemm


def _is_gemm_tensor(name: str) -> bool:
    """Demux tensors that feed a GEMM as weight or bias (stored in the compute dtype); LayerNorm parameters,
    the instance embedding and the fused per-instance constant stay float32."""
    return not any(k in name for k in ("layer_norm", "layernorm", "ln_all", "instance_embedding", ".const"))


class Demultiplexer(nn.Module):
    """Forward: ``x [G, R, d']`` (encoder output; R >= 1 rows, R >= N+1 for ``index``) -> ``[G*N, D]``.

    Output row ``g*N + n`` belongs to input row ``g*N + n``. Variants (docs/checkpoint-formats.md §2.6):

    * ``index_pos``: ``h = x[:, 0]``; ``y1 = gelu(dense_1([e_n ; h]))`` (legacy: then ``LN_1``);
      ``y_k = gelu(dense_k(y)) + y`` for k = 2..K; ``z = LN_pre(gelu(pre_decoder(y))) + y``.
      Fused (E4): ``dense_1([e_n ; h]) = const_n + shared h`` — one GEMM per group, not per instance.
    * ``mlp``: ``y_n = LN_n(gelu(dense_n(h)))``; ``z_n = LN(gelu(dense_before_out_proj(y_n)))``; fused: the N
      dense_n stacked into one GEMM.
    * ``index``: ``z_n = LN(gelu(dense([x[:, n] ; x[:, N]])))``; fused: ``left x[:, n] + right x[:, N] + b``.

    Attribute ``impl``: ``"torch"`` (default) or ``"triton"`` — the fused first index_pos layer as one
    OpenAI-Triton kernel (:func:`prumux_compile.kernels.triton_demux.demux_first_triton`); set with
    :meth:`set_impl`.
    """

    def __init__(self, spec: Demux, num_instances: int, eps: float, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.variant = spec.variant
        self.n = num_instances
        self.eps = float(eps)
        self.fused = spec.fused
        self.legacy = spec.legacy
        self.num_dense = spec.num_layers
        self.impl = "torch"
        self._triton = None
        self.t = nn.ParameterDict({k.replace(".", "__"): frozen(v, compute_dtype if _is_gemm_tensor(k) else None)
                                   for k, v in spec.tensors.items()})

    @property
    def triton_capable(self) -> bool:
        """True when the Triton kernel implements the first layer (fused index_pos)."""
        return self.variant == "index_pos" and self.fused

    def set_impl(self, impl: str) -> None:
        """Use the ``"torch"`` or ``"triton"`` form of the fused first layer (class docstring).

        Raises:
            ValueError: an unknown choice, or ``"triton"`` for a demultiplexer the kernel does not implement.
        """
        if impl not in ("torch", "triton"):
            raise ValueError(f"demux impl {impl!r}: expected 'torch' or 'triton'")
        if impl == "triton" and not self.triton_capable:
            raise ValueError(f"the Triton demux kernel implements the fused index_pos layer, not {self.variant}")
        if impl == "triton":
            from prumux_compile.kernels.triton_demux import demux_first_triton

            self._triton = demux_first_triton
        self.impl = impl

    def _p(self, name: str) -> Tensor:
        return self.t[name.replace(".", "__")]

    def _ln(self, x: Tensor, name: str) -> Tensor:
        w = self._p(name + ".weight")
        return F.layer_norm(f32(x), (w.shape[0],), w, self._p(name + ".bias"), self.eps)

    def forward(self, x: Tensor) -> Tensor:
        g = x.shape[0]
        n = self.n
        if self.variant == "index_pos":
            h = x[:, 0]
            if self.fused and self.impl == "triton":
                shared = self._p("dense_1.shared")
                y = f32(self._triton(h.to(shared.dtype), shared, self._p("dense_1.const")))
            elif self.fused:
                y = F.gelu(f32(gemm(h, self._p("dense_1.shared")))[:, None, :] + self._p("dense_1.const"))
            else:
                e = self._p("demux_instance_embedding")
                u = torch.cat([e[None].expand(g, n, e.shape[1]), h[:, None, :].expand(g, n, h.shape[1])], dim=-1)
                y = f32(F.gelu(gemm(u, self._p("dense_1.weight"), self._p("dense_1.bias"))))
            if self.legacy:
                y = self._ln(y, "layer_norm_1")
            for k in range(2, self.num_dense + 1):
                y = f32(F.gelu(gemm(y, self._p(f"dense_{k}.weight"), self._p(f"dense_{k}.bias")))) + y
            z = self._ln(F.gelu(gemm(y, self._p("pre_decoder.weight"), self._p("pre_decoder.bias"))),
                         "pre_decoder_layer_norm") + y
        elif self.variant == "mlp":
            h = x[:, 0]
            if self.fused:
                y = f32(F.gelu(gemm(h, self._p("dense_all.weight"), self._p("dense_all.bias")))).reshape(g, n, -1)
                y = (F.layer_norm(y, (self._p("ln_all.weight").shape[-1],), None, None, self.eps)
                     * self._p("ln_all.weight") + self._p("ln_all.bias"))
            else:
                y = torch.stack([
                    self._ln(F.gelu(gemm(h, self._p(f"dense_{i}.weight"), self._p(f"dense_{i}.bias"))),
                             f"layer_norm_{i}")
                    for i in range(n)], dim=1)
            z = self._ln(F.gelu(gemm(y, self._p("dense_before_out_proj.weight"),
                                     self._p("dense_before_out_proj.bias"))), "layernorm")
        else:  # index
            p = x[:, :n]
            hn = x[:, n : n + 1]
            if self.fused:
                pre = (f32(gemm(p, self._p("dense.left"))) + f32(gemm(hn, self._p("dense.right")))
                       + f32(self._p("dense.bias")))
            else:
                u = torch.cat([p, hn.expand(g, n, hn.shape[-1])], dim=-1)
                pre = gemm(u, self._p("dense.weight"), self._p("dense.bias"))
            z = self._ln(F.gelu(pre), "layer_norm")
        return z.reshape(g * n, z.shape[-1])
