"""``fuse-mux``: fold the hadamard multiplexer into the pass-1 embedding LayerNorm's affine (docs/checkpoint-formats.md E3).

With x̂_n the normalised pass-1 embeddings of instance n, gamma/beta the embedding LayerNorm affine and
v_n the instance vectors: ``mean_n (x̂_n ⊙ gamma + beta) ⊙ v_n = sum_n x̂_n ⊙ (gamma ⊙ v_n / N) + beta ⊙ mean_n v_n``.
random_ortho: ``sum_n (x̂_n ⊙ gamma + beta) V_nᵀ / sqrt N = sum_n x̂_n (diag(gamma) V_nᵀ / sqrt N) + sum_n beta V_nᵀ / sqrt N``
(per-instance GEMMs). Exact up to float rounding. Needs ``prune-hidden`` first (plain LayerNorm).
"""
from __future__ import annotations

import math

from prumux_compile.ir import ModelIR
from prumux_compile.passes.base import Pass


class FuseMux(Pass):
    name = "fuse-mux"

    def applies(self, ir: ModelIR) -> bool:
        return ir.mux is not None and ir.mux.fused_scale is None and ir.hidden_keep is None

    def apply(self, ir: ModelIR) -> tuple[str, dict]:
        mux = ir.mux
        gamma, beta = ir.embeddings.ln_weight, ir.embeddings.ln_bias
        n = mux.num_instances
        v = mux.instance_embedding
        if mux.variant == "random_ortho":
            vt = v.transpose(1, 2)  # [N, d_in, d_out]
            mux.fused_scale = gamma[None, :, None] * vt / math.sqrt(n)
            mux.fused_shift = (beta[None, None, :] @ vt).sum(0)[0] / math.sqrt(n)
            how = "per-instance GEMMs with the LayerNorm affine folded in"
        else:
            mux.fused_scale = gamma[None, :] * v / n
            mux.fused_shift = beta * v.mean(0)
            how = "LayerNorm affine folded into the instance vectors"
        return f"{mux.variant} multiplexer, N={n}: {how}", {"variant": mux.variant, "num_instances": n}
