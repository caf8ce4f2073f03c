"""Embeddings and the multiplexer (docs/checkpoint-formats.md §2.1–2.4, E2, E3); float32 throughout (the
compute-dtype policy of :mod:`.norm` keeps embeddings and the multiplexer's statistics in float32)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from prumux_compile.ir import Embeddings, Mux
from prumux_compile.kernels.norm import LayerNorm, frozen


class MuxEmbedding(nn.Module):
    """Pass-1 embeddings, the multiplexer and the pass-2 ("double") embeddings of a multiplexed model.

    Forward: ``ids [G*N, L']`` int64 (rows gN+n = instance n of group g) -> ``x0 [G, L', d']`` float32.

    Unfused (docs/checkpoint-formats.md §2.2–2.4): ``E1 = LN(word[ids] + Pos + Type0)``; hadamard ``M = mean_n E1_n ⊙ v_n``,
    random_ortho ``M = sum_n E1_n V_nᵀ / sqrt(N)``; ``x0 = LN(M + Pos + Type0)``.
    Fused (``Mux.fused_scale`` set, docs/checkpoint-formats.md E3): the pass-1 LayerNorm's affine is folded into the instance
    vectors, so ``M = sum_n x̂_n ⊙ s_n + t`` (or ``x̂_n @ S_n`` for random_ortho) with x̂ the normalised
    pass-1 embeddings.

    Attribute ``impl``: ``"torch"`` (default) or ``"triton"`` — the fused hadamard form as one OpenAI-Triton
    kernel (:func:`prumux_compile.kernels.triton_mux.mux_embed_triton`, same arithmetic; a runtime kernel choice
    of the CUDA engine, set with :meth:`set_impl`).
    """

    def __init__(self, emb: Embeddings, mux: Mux, eps: float, seq_len: int, hidden_keep: Tensor | None = None):
        super().__init__()
        self.impl = "torch"
        self._triton = None
        self.n = mux.num_instances
        self.variant = mux.variant
        self.eps = float(eps)
        self.word = frozen(emb.word)
        # E2: constant position + token-type-0 table for the compiled length (both passes use the same tables).
        self.const = frozen(emb.position[:seq_len] + emb.token_type[0])
        self.ln = LayerNorm(emb.ln_weight, emb.ln_bias, eps, hidden_keep)
        self.fused = mux.fused_scale is not None
        if self.fused:
            if hidden_keep is not None:
                raise ValueError("fuse-mux needs prune-hidden first (hidden_keep is set)")
            self.scale = frozen(mux.fused_scale)
            self.shift = frozen(mux.fused_shift)
        else:
            self.v = frozen(mux.instance_embedding)

    @property
    def triton_capable(self) -> bool:
        """True when the Triton kernel implements this multiplexer (fused hadamard, no keep mask)."""
        return self.fused and self.variant != "random_ortho" and self.ln.keep is None

    def set_impl(self, impl: str) -> None:
        """Use the ``"torch"`` or ``"triton"`` form (module docstring).

        Raises:
            ValueError: an unknown choice, or ``"triton"`` for a multiplexer the kernel does not implement.
        """
        if impl not in ("torch", "triton"):
            raise ValueError(f"mux impl {impl!r}: expected 'torch' or 'triton'")
        if impl == "triton" and not self.triton_capable:
            raise ValueError(f"the Triton mux kernel implements fused hadamard multiplexers, not {self.variant}")
        if impl == "triton":
            from prumux_compile.kernels.triton_mux import mux_embed_triton

            self._triton = mux_embed_triton
        self.impl = impl

    def forward(self, ids: Tensor) -> Tensor:
        n = self.n
        if self.impl == "triton":
            return self._triton(ids, self.word, self.const, self.scale, self.shift, self.eps,
                                (self.ln.weight, self.ln.bias), out_dtype=torch.float32)
        if self.fused and self.variant != "random_ortho":
            # Fused hadamard, in as few passes over the G·N·L' tokens as standard ops allow: instance n's rows are
            # gathered, shifted by the position table and normalised with s_n as the LayerNorm's own scale (one
            # LayerNormalization kernel does the Hadamard product), then the N results are summed; the shift t and
            # the pass-2 constant are one folded table. Same arithmetic as sum_n LN(y_n) ⊙ s_n + t (no Mul, no
            # ReduceSum over an [G, N, L', d] tensor).
            d = self.word.shape[1]
            grouped = ids.reshape(ids.shape[0] // n, n, ids.shape[1])
            parts = [F.layer_norm(F.embedding(grouped[:, i], self.word) + self.const, (d,), self.scale[i], None,
                                  self.eps) for i in range(n)]
            m = parts[0]
            for part in parts[1:]:
                m = m + part
            return self.ln(m + (self.const + self.shift))
        y = F.embedding(ids, self.word) + self.const
        rows, length, d = y.shape
        if self.fused:  # random_ortho
            xhat = F.layer_norm(y, (self.word.shape[1],), None, None, self.eps).reshape(rows // n, n, length, d)
            m = torch.einsum("gnld,nde->gle", xhat, self.scale) + self.shift
        else:
            e1 = self.ln(y).reshape(rows // n, n, length, d)
            if self.variant == "random_ortho":
                m = torch.einsum("gnld,ned->gle", e1, self.v) / math.sqrt(n)
            else:
                m = (e1 * self.v[None, :, None, :]).mean(1)
        return self.ln(m + self.const)


class PlainEmbedding(nn.Module):
    """BERT embeddings of the N = 1 families (docs/checkpoint-formats.md §2.8): ``LN(word[ids] + Pos[:S] + Type[tt])``.

    Forward: ``ids, token_type_ids [B, S]`` int64 -> ``[B, S, d']``.
    """

    def __init__(self, emb: Embeddings, eps: float, hidden_keep: Tensor | None = None):
        super().__init__()
        self.word = frozen(emb.word)
        self.position = frozen(emb.position)
        self.token_type = frozen(emb.token_type)
        self.ln = LayerNorm(emb.ln_weight, emb.ln_bias, eps, hidden_keep)

    def forward(self, ids: Tensor, token_type_ids: Tensor) -> Tensor:
        s = ids.shape[1]
        y = F.embedding(ids, self.word) + self.position[:s] + F.embedding(token_type_ids, self.token_type)
        return self.ln(y)
