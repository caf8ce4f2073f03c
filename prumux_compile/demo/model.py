"""The trainable demo model: upstream inference semantics as a differentiable PyTorch module.

:class:`DemoModel` holds the tensors of ONE compressed-layout checkpoint (canonical names of
``docs/checkpoint-formats.md`` §1.4: family ``bert`` / ``cofi_compressed`` for N = 1, ``prumux_compressed``
with a hadamard mux (gaussian or binary instance vectors) and index_pos demux for N > 1) as parameters, and its
forward pass in eval mode computes exactly what :func:`prumux_compile.reference.forward` computes for that checkpoint (the equality is a
test, fp64, |Δlogit| <= 1e-9), so the weights are trained for the function that is compiled and validated:

* N = 1 (docs/checkpoint-formats.md §2.8): ``LN(word[ids] + type[tt] + pos)``, post-LN BERT layers with the
  additive mask ``(1 - attention_mask) * -10000``, pooler ``tanh(W_p x[:, 0] + b_p)``, classifier.
* N > 1 (docs/checkpoint-formats.md §2.1–§2.7): ids right-padded with [PAD] (0) to exactly ``seq_len``, [CLS]
  (101) written into column 0, batch padded to a multiple of N with copies of its last row (the reference's ``"repeat-last"``); first
  embedding pass ``E1 = LN(word[ids] + type[0] + pos)``; hadamard mux ``M_g = mean_n E1_{gN+n} ⊙ v_n``;
  second pass ``LN(M + type[0] + pos)`` with the same tables and LayerNorm; encoder WITHOUT attention mask;
  index_pos demux on the encoder state at position 0: ``y = gelu(dense_1([e_n ; h_0]))``, then
  ``y = gelu(dense_k(y)) + y`` for k = 2 .. K_d - 1, ``z = LN(gelu(pre_decoder(y))) + y``; classifier on z.

Only what the classifier path reads is a parameter (``bert.embeddings.*``, the encoder, the pooler for N = 1,
``instance_embedding``, ``demux_module.*`` used, ``demultiplexer.pre_decoder*``, ``classifier.*``); the
retrieval warm-up head of DataMUX (Murahari et al., 2022, section 3.3) is an optional extra used only in training.

Training-only behaviour (``model.train()``): dropout with probability ``dropout`` after the embedding
LayerNorm (the second one for N > 1), on each sublayer output before the residual add, and on the classifier
input (HF BERT's ``hidden_dropout_prob`` places; attention-probability dropout is not used). Eval mode has no
randomness.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from prumux_compile.errors import InputError

__all__ = ["DemoModel", "PAD_ID", "CLS_ID", "CLASSIFIER_PATH_KEYS"]

#: [PAD] and [CLS] of the bert-base-uncased vocabulary (the reference's ``PAD_TOKEN_ID`` / ``CLS_TOKEN_ID``).
PAD_ID = 0
CLS_ID = 101
_SEP_ID = 102
_EMB = "bert.embeddings."
#: Key prefixes read by the classifier path of a multiplexed model besides the trunk.
CLASSIFIER_PATH_KEYS = ("instance_embedding", "demux_module.", "demultiplexer.pre_decoder", "classifier.")


def _munge(key: str) -> str:
    return key.replace(".", "__")


class DemoModel(nn.Module):
    """A compressed-layout BERT classifier (N = 1) or PruMUX classifier (N > 1) whose parameters are the
    checkpoint's tensors.

    Args:
        state_dict: canonical names -> tensors of a compressed checkpoint (every width from the shapes: heads
            per layer = ``attention.output.dense.weight.shape[1] / head_size``, a sublayer is absent iff its
            weights are). Tensors are copied (float32) into parameters; keys the forward pass does not read are
            kept as buffers-by-value in :attr:`extra` and returned unchanged by :meth:`checkpoint_state`.
        num_instances: N >= 1.
        head_size: dh (32 for MiniLM).
        seq_len: padded length of the multiplexed forward (unused for N = 1).
        eps: LayerNorm epsilon (config ``layer_norm_eps``).
        demux_layers: ``num_hidden_demux_layers`` K_d >= 2 of the index_pos demux.
        dropout: training-mode dropout probability.
        frozen: key prefixes whose tensors get ``requires_grad=False`` (default: the word embeddings and the
            instance embedding, kept fixed as upstream's ``learn_muxing=False``).
        retrieval: N > 1 only: also hold the retrieval head (``retrieval_head.pre_decoder*``,
            ``retrieval_head.bias``; decoder tied to the word embeddings) for :meth:`retrieval_loss`.

    Raises:
        InputError: N < 1, K_d < 2, or a widths inconsistency in ``state_dict``.
    """

    def __init__(self, state_dict: dict[str, torch.Tensor], *, num_instances: int, head_size: int,
                 seq_len: int = 64, eps: float = 1e-12, demux_layers: int = 3, dropout: float = 0.1,
                 frozen: tuple[str, ...] = (_EMB + "word_embeddings.weight", "instance_embedding"),
                 retrieval: bool = False):
        super().__init__()
        if num_instances < 1 or demux_layers < 2 or seq_len < 1:
            raise InputError(f"DemoModel: need N >= 1, demux layers >= 2, seq_len >= 1 (got {num_instances}, "
                             f"{demux_layers}, {seq_len})")
        self.n = int(num_instances)
        self.dh = int(head_size)
        self.seq_len = int(seq_len)
        self.eps = float(eps)
        self.kd = int(demux_layers)
        self.p_drop = float(dropout)
        self.retrieval = bool(retrieval) and self.n > 1
        self.num_layers = 1 + max(int(k.split(".")[3]) for k in state_dict if k.startswith("bert.encoder.layer."))
        used = self._used_keys(state_dict)
        self.params = nn.ParameterDict()
        self.extra: dict[str, torch.Tensor] = {}
        for key, t in state_dict.items():
            if key in used:
                p = nn.Parameter(t.detach().to(torch.float32).clone(),
                                 requires_grad=not any(key.startswith(f) for f in frozen))
                self.params[_munge(key)] = p
            else:
                self.extra[key] = t
        for i in range(self.num_layers):
            wo = self._get(f"bert.encoder.layer.{i}.attention.output.dense.weight")
            if wo is not None and wo.shape[1] % self.dh:
                raise InputError(f"layer {i}: attention width {wo.shape[1]} is not a multiple of dh={self.dh}")

    # ------------------------------------------------------------------------------------------ tensors
    def _used_keys(self, sd: dict[str, torch.Tensor]) -> set[str]:
        used = {k for k in sd if k.startswith(_EMB) and k != _EMB + "position_ids"}
        used |= {k for k in sd if k.startswith("bert.encoder.layer.")}
        used |= {k for k in sd if k.startswith("classifier.")}
        if self.n == 1:
            used |= {k for k in sd if k.startswith("bert.pooler.")}
        else:
            used |= {"instance_embedding", "demux_module.demux_instance_embedding"}
            used |= {f"demux_module.dense_{k}.{s}" for k in range(1, self.kd) for s in ("weight", "bias")}
            used |= {k for k in sd if k.startswith("demultiplexer.pre_decoder")}
            if self.retrieval:
                used |= {k for k in sd if k.startswith("retrieval_head.pre_decoder")} | {"retrieval_head.bias"}
            missing = sorted(k for k in used if k not in sd)
            if missing:
                raise InputError(f"DemoModel: state dict lacks {missing}")
        return used & set(sd)

    def _get(self, key: str) -> torch.Tensor | None:
        m = _munge(key)
        return self.params[m] if m in self.params else None

    def _p(self, key: str) -> torch.Tensor:
        return self.params[_munge(key)]

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """Canonical names -> float32 tensors (detached copies) of every tensor of the checkpoint, trained ones
        included, in the order of the ``state_dict`` given to the constructor's parameters then extras."""
        out = {k.replace("__", "."): p.detach().to(torch.float32).clone() for k, p in self.params.items()}
        out.update({k: v for k, v in self.extra.items()})
        return out

    # ------------------------------------------------------------------------------------------ pieces
    def _ln(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self._p(prefix + ".weight"), self._p(prefix + ".bias"), self.eps)

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.p_drop, self.training) if self.p_drop > 0 else x

    def _linear(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.linear(x, self._p(prefix + ".weight"), self._p(prefix + ".bias"))

    def encoder(self, x: torch.Tensor, add_mask: torch.Tensor | None) -> torch.Tensor:
        """Post-LN BERT layers on ``x`` [B, L, d'] with an optional additive mask [B, 1, 1, L]."""
        b, length, _ = x.shape
        for i in range(self.num_layers):
            p = f"bert.encoder.layer.{i}."
            if self._get(p + "attention.output.dense.weight") is not None:
                heads = self._p(p + "attention.output.dense.weight").shape[1] // self.dh

                def split(t: torch.Tensor) -> torch.Tensor:
                    return t.view(b, length, heads, self.dh).transpose(1, 2)

                q = split(self._linear(x, p + "attention.self.query"))
                k = split(self._linear(x, p + "attention.self.key"))
                v = split(self._linear(x, p + "attention.self.value"))
                scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.dh)
                if add_mask is not None:
                    scores = scores + add_mask
                ctx = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(b, length, -1)
                att = self._drop(self._linear(ctx, p + "attention.output.dense"))
                x = self._ln(x + att, p + "attention.output.LayerNorm")
            if self._get(p + "output.dense.weight") is not None:
                u = F.gelu(self._linear(x, p + "intermediate.dense"), approximate="none")
                x = self._ln(x + self._drop(self._linear(u, p + "output.dense")), p + "output.LayerNorm")
        return x

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, C] (dtype of the parameters) for int64 ``input_ids`` [B, S].

        N = 1: ``attention_mask`` [B, S] (None: all ones) and ``token_type_ids`` [B, S] (None: zeros) are used.
        N > 1: both are ignored (upstream semantics); S <= ``seq_len``; B need not be a multiple of N.

        Raises:
            InputError: not a 2-D batch, or S > ``seq_len`` for N > 1.
        """
        if input_ids.dim() != 2 or input_ids.shape[0] == 0:
            raise InputError(f"input_ids: expected a non-empty [B, S] batch, got shape {list(input_ids.shape)}")
        return self.classify(self.features(input_ids, attention_mask, token_type_ids))

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The classifier input [B, D]: pooler output (N = 1) or demultiplexer output (N > 1), one row per
        input row (arguments as :meth:`forward`)."""
        if input_ids.dim() != 2 or input_ids.shape[0] == 0:
            raise InputError(f"input_ids: expected a non-empty [B, S] batch, got shape {list(input_ids.shape)}")
        if self.n == 1:
            return self._single(input_ids, attention_mask, token_type_ids)
        return self.demux(self.muxed_encoder(input_ids))[: input_ids.shape[0]]

    def _single(self, ids, attention_mask, token_type_ids) -> torch.Tensor:
        b, s = ids.shape
        dtype = self._p(_EMB + "word_embeddings.weight").dtype
        tt = torch.zeros_like(ids) if token_type_ids is None else token_type_ids
        x = (self._p(_EMB + "word_embeddings.weight")[ids] + self._p(_EMB + "token_type_embeddings.weight")[tt]
             + self._p(_EMB + "position_embeddings.weight")[:s])
        x = self._drop(self._ln(x, _EMB + "LayerNorm"))
        mask = torch.ones(b, s, dtype=dtype) if attention_mask is None else attention_mask.to(dtype)
        x = self.encoder(x, ((1.0 - mask) * -10000.0)[:, None, None, :])
        return torch.tanh(self._linear(x[:, 0], "bert.pooler.dense"))

    def padded_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Upstream input preparation of a multiplexed model: [B, S] -> [B', seq_len] (B' = B rounded up to a
        multiple of N with copies of the last row, right-padded with [PAD], [CLS] in column 0); a new tensor."""
        b, s = input_ids.shape
        if s > self.seq_len:
            raise InputError(f"input_ids: sequence length {s} exceeds seq_len={self.seq_len}")
        ids = F.pad(input_ids.to(torch.int64), (0, self.seq_len - s), value=PAD_ID)
        k = (-b) % self.n
        if k:
            ids = torch.cat([ids, ids[-1:].expand(k, -1)], dim=0)
        ids = ids.clone()
        ids[:, 0] = CLS_ID
        return ids

    def muxed_encoder(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Encoder states [G, seq_len, d'] of the mux groups of ``input_ids`` [B, S] (double embedding pass,
        hadamard mux, no attention mask)."""
        ids = self.padded_ids(input_ids)
        g = ids.shape[0] // self.n
        pos = self._p(_EMB + "position_embeddings.weight")[: self.seq_len]
        type0 = self._p(_EMB + "token_type_embeddings.weight")[0]
        e1 = self._ln(self._p(_EMB + "word_embeddings.weight")[ids] + type0 + pos, _EMB + "LayerNorm")
        v = self._p("instance_embedding")
        m = (e1.view(g, self.n, self.seq_len, -1) * v[None, :, None, :]).mean(dim=1)
        x = self._drop(self._ln(m + type0 + pos, _EMB + "LayerNorm"))
        return self.encoder(x, None)

    def demux(self, states: torch.Tensor, position: int = 0) -> torch.Tensor:
        """index_pos demultiplexer on ``states[:, position]`` ([G, L, d']) -> [G*N, d] (row g*N + n = instance
        n of group g). Position 0 is the classifier path; others serve the retrieval warm-up."""
        h = states[:, position, :]
        return self.demux_vectors(h)

    def demux_vectors(self, h: torch.Tensor) -> torch.Tensor:
        """index_pos demultiplexer on any [..., d'] states -> [..., N, d] (flattened to [G*N, d] for 2-D h)."""
        y = self._demux_hidden(h)
        z = F.gelu(self._linear(y, "demultiplexer.pre_decoder"), approximate="none")
        z = self._ln(z, "demultiplexer.pre_decoder_layer_norm") + y
        return z.reshape(-1, z.shape[-1]) if h.dim() == 2 else z

    def retrieval_loss(self, input_ids: torch.Tensor, states: torch.Tensor, positions: int,
                       generator: torch.Generator) -> tuple[torch.Tensor, float]:
        """DataMUX's retrieval objective (Murahari et al., 2022, section 3.3) on sampled positions.

        For ``positions`` positions l per mux group, drawn uniformly (with ``generator``) from 1 .. the longest
        row of the group - 1, every instance n predicts its own token ``ids[gN+n, l]`` from the demultiplexed
        state: ``y = demux_module([e_n ; H[g, l]])`` (the layers the classifier path shares), then
        ``LN(gelu(W_r y + b_r)) E^T + b`` with E the word embeddings (tied decoder, upstream
        ``RetrievalHeadIndexPosDemultiplexing``). Cross-entropy over the vocabulary, [PAD] targets ignored.

        Args:
            input_ids: the [B, S] batch given to :meth:`muxed_encoder` (B a multiple of N).
            states: its encoder states [G, seq_len, d'].

        Returns:
            (loss, token accuracy of the retrieval over the non-[PAD] targets).
        """
        ids = self.padded_ids(input_ids)
        g, length = states.shape[0], states.shape[1]
        real = (ids != PAD_ID).view(g, self.n, length).any(dim=1)  # [G, L]
        longest = real.sum(dim=1).clamp(min=2)  # [G]
        pos = 1 + (torch.rand(g, positions, generator=generator) * (longest[:, None] - 1).float()).long()
        h = states.gather(1, pos[..., None].expand(-1, -1, states.shape[2]))  # [G, P, d']
        y = self._demux_hidden(h)  # [G, P, N, d]
        r = F.gelu(self._linear(y, "retrieval_head.pre_decoder"), approximate="none")
        r = self._ln(r, "retrieval_head.pre_decoder_layer_norm")
        logits = F.linear(r, self._p(_EMB + "word_embeddings.weight"), self._p("retrieval_head.bias"))
        target = ids.view(g, self.n, length).transpose(1, 2).gather(
            1, pos[..., None].expand(-1, -1, self.n))  # [G, P, N]
        flat_t = target.reshape(-1)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), flat_t, ignore_index=PAD_ID)
        keep = flat_t != PAD_ID
        acc = float((logits.reshape(-1, logits.shape[-1]).argmax(-1)[keep] == flat_t[keep]).float().mean()) \
            if bool(keep.any()) else float("nan")
        return loss, acc

    def _demux_hidden(self, h: torch.Tensor) -> torch.Tensor:
        """``demux_module`` layers on [..., d'] states -> [..., N, d] (dense_1 on [e_n ; h], then the residual
        dense layers), shared by the classifier and retrieval paths."""
        e = self._p("demux_module.demux_instance_embedding")
        shape = h.shape[:-1]
        hn = h.unsqueeze(-2).expand(*shape, self.n, h.shape[-1])
        en = e.expand(*shape, self.n, e.shape[-1])
        y = F.gelu(self._linear(torch.cat([en, hn], dim=-1), "demux_module.dense_1"), approximate="none")
        for k in range(2, self.kd):
            y = F.gelu(self._linear(y, f"demux_module.dense_{k}"), approximate="none") + y
        return y

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """Classifier on demultiplexed features [R, d] -> logits [R, C]."""
        return self._linear(self._drop(z), "classifier")
