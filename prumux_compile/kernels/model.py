"""The compiled model: a ``torch.nn.Module`` with static structure built from the IR alone (F7 in docs/field-faults.md).

This package is the ONLY definition of the compact model: the ONNX export, the eager baseline and the CUDA
engine (:mod:`prumux_compile.engines.torch_cuda`, a runtime around this module) all run it.

Export-friendly: no data-dependent branches (F19 in docs/field-faults.md), no RNG, no in-place writes to the caller's inputs; batch
padding to a multiple of N and sequence padding to the compiled length happen inside the forward, so the
exported graph accepts any batch B >= 1 and any length S <= ``seq_len``. Precision: ``compute_dtype`` (the
policy of :mod:`.norm`: GEMMs in that dtype, LayerNorm / softmax / reductions / residual stream in float32).
Runtime kernel choices (:meth:`CompiledModel.set_kernels`): the OpenAI-Triton multiplexer / first demux layer,
fused scaled-dot-product attention.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from prumux_compile.errors import IRInvariantError
from prumux_compile.ir import ModelIR
from prumux_compile.kernels.attention import ATTENTION_IMPLS
from prumux_compile.kernels.demux import Demultiplexer
from prumux_compile.kernels.layer import EncoderLayer
from prumux_compile.kernels.mux import MuxEmbedding, PlainEmbedding
from prumux_compile.kernels.norm import frozen

#: [CLS] and [PAD] ids of the bert-base-uncased WordPiece vocabulary (upstream hard-codes 101; docs/checkpoint-formats.md §2.1).
CLS_ID = 101
PAD_ID = 0
#: Additive attention-mask value of transformers 4.17 (docs/checkpoint-formats.md §2.8).
MASK_VALUE = -10000.0


def index_prefix(num_instances: int) -> Tensor:
    """The ``index`` demux variant's per-instance token prefix ``[N, N+1]`` int64 (docs/checkpoint-formats.md §2.1 step 3):
    ``prefix[n, j] = 678 - n if j == n else 680`` for j < N, ``prefix[n, N] = 101``."""
    n = num_instances
    p = torch.full((n, n + 1), 680, dtype=torch.int64)
    for i in range(n):
        p[i, i] = 678 - i
    p[:, n] = CLS_ID
    return p


class CompiledModel(nn.Module):
    """Forward ``(input_ids, attention_mask, token_type_ids)`` -> ``logits [B, C]`` float32.

    Inputs are int64 ``[B, S]``. Multiplexed families ignore ``attention_mask`` and ``token_type_ids`` as
    upstream does (docs/checkpoint-formats.md Q2, Q3), pad the sequence with [PAD] to ``seq_len`` (their encoder attends every
    position, so the padded length is part of the model) and pad the batch to a multiple of N with copies of
    the last row ("repeat-last", our deterministic replacement for upstream's random rows, docs/checkpoint-formats.md Q1); the
    extra rows are dropped from the output. N = 1 families use the mask and token types as BERT does.

    Args:
        ir: the IR (any stage after ``fold-masks``).
        compute_dtype: float32 (default; what is exported), float16 or bfloat16 (policy of :mod:`.norm`).

    Attributes: ``num_instances`` (N), ``seq_len`` (compiled length or None), ``num_labels`` (C), ``family``,
    ``compute_dtype``.
    """

    def __init__(self, ir: ModelIR, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        if ir.masks is not None:
            raise IRInvariantError("build_module: the IR still holds soft zs masks; run fold-masks first")
        if compute_dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise IRInvariantError(f"build_module: compute dtype {compute_dtype} (expected float32/16, bfloat16)")
        self.compute_dtype = compute_dtype
        self.family = ir.family
        self.num_instances = ir.num_instances
        self.seq_len = ir.seq_len
        self.num_labels = ir.num_labels
        self.muxed = ir.is_muxed
        keep = ir.hidden_keep
        if self.muxed:
            self.demux_variant = ir.demux.variant
            extra = self.num_instances + 1 if self.demux_variant == "index" else 0
            self.embed = MuxEmbedding(ir.embeddings, ir.mux, ir.eps, ir.seq_len + extra, keep)
            self.demux = Demultiplexer(ir.demux, self.num_instances, ir.eps, compute_dtype)
            if self.demux_variant == "index":
                self.register_buffer("prefix", index_prefix(self.num_instances), persistent=False)
            self.pooler_w = self.pooler_b = None
        else:
            self.embed = PlainEmbedding(ir.embeddings, ir.eps, keep)
            self.pooler_w, self.pooler_b = frozen(ir.pooler[0]), frozen(ir.pooler[1])
        self.layers = nn.ModuleList(EncoderLayer(layer, ir.eps, keep, ir.activation, compute_dtype)
                                    for layer in ir.layers)
        self.classifier_w, self.classifier_b = frozen(ir.classifier[0]), frozen(ir.classifier[1])

    def set_kernels(self, *, mux: str | None = None, demux: str | None = None, attention: str | None = None) -> dict:
        """Runtime kernel choices (None = unchanged): ``mux`` / ``demux`` ``"torch"`` or ``"triton"`` (only where
        this model has the fused layer the kernel implements; elsewhere the choice stays ``"torch"``),
        ``attention`` one of :data:`~prumux_compile.kernels.attention.ATTENTION_IMPLS`.

        Returns:
            The choices in effect: ``{"mux", "demux", "attention"}``.

        Raises:
            ValueError: an unknown choice.
        """
        if mux is not None and self.muxed:
            self.embed.set_impl(mux if self.embed.triton_capable else "torch")
        if demux is not None and self.muxed:
            self.demux.set_impl(demux if self.demux.triton_capable else "torch")
        if attention is not None:
            if attention not in ATTENTION_IMPLS:
                raise ValueError(f"attention {attention!r}: expected one of {', '.join(ATTENTION_IMPLS)}")
            for layer in self.layers:
                if layer.attention is not None:
                    layer.attention.impl = attention
        return self.kernels

    @property
    def kernels(self) -> dict:
        """The kernel choices in effect (see :meth:`set_kernels`)."""
        att = next((l.attention.impl for l in self.layers if l.attention is not None), "math")
        return {"mux": self.embed.impl if self.muxed else "torch",
                "demux": self.demux.impl if self.muxed else "torch", "attention": att}

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> Tensor:
        if self.muxed:
            return self._forward_muxed(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embed(input_ids, token_type_ids)
        mask_add = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * MASK_VALUE
        for layer in self.layers:
            x = layer(x, mask_add)
        pooled = torch.tanh(F.linear(x[:, 0], self.pooler_w, self.pooler_b))
        return F.linear(pooled, self.classifier_w, self.classifier_b)

    def _forward_muxed(self, input_ids: Tensor) -> Tensor:
        n = self.num_instances
        b = input_ids.shape[0]
        s = input_ids.shape[1]
        groups = (b + n - 1) // n
        rows = torch.arange(groups * n, device=input_ids.device).clamp(max=b - 1)
        ids = input_ids.index_select(0, rows)  # a new tensor: the caller's array is never written
        ids = torch.cat([ids, torch.zeros(groups * n, self.seq_len - s, dtype=ids.dtype, device=ids.device)], 1)
        if self.demux_variant == "index":
            ids = torch.cat([self.prefix.repeat(groups, 1), ids], 1)
        else:
            ids = torch.cat([torch.full_like(ids[:, :1], CLS_ID), ids[:, 1:]], 1)
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x)
        z = self.demux(x)
        logits = F.linear(z, self.classifier_w, self.classifier_b)
        return logits[:b]


def build_module(ir: ModelIR, compute_dtype: torch.dtype = torch.float32) -> CompiledModel:
    """Build the compiled model of ``ir`` (eval mode, CPU; float32 unless ``compute_dtype`` says otherwise).

    Raises:
        IRInvariantError: the IR still holds soft masks (``fold-masks`` has not run), or an unsupported dtype.
    """
    return CompiledModel(ir, compute_dtype).eval()
