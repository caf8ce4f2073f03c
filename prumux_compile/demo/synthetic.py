"""Synthetic upstream-format checkpoints with seeded random weights (test fixtures and oracles).

:func:`write_checkpoint` writes a checkpoint directory of any family of docs/checkpoint-formats.md §1.1
exactly as upstream lays it out (docs/checkpoint-formats.md §1.3 config fields, §1.4 key names and shapes with
their quirks, docs/checkpoint-formats.md §1.5 ``zs.pt``): compressed families (A ``prumux_compressed``, D ``cofi_compressed``) get weights
at the sliced shapes, masked families (B ``prumux_masked``, E ``cofi_masked``) get full weights plus masks,
``muxplm`` (C) and ``bert`` (F) get full shapes.

Every tensor is drawn from its own ``torch.Generator`` seeded from ``(spec.seed, tensor name)``, so two
specs with the same seed share every tensor they have in common: the compressed checkpoint of a spec is
*exactly* the direct slice of the masked checkpoint of the same spec with binary masks.

:func:`compress_like_upstream` is an independent re-implementation of upstream ``update_params`` followed
by ``prune_model_with_z`` (docs/checkpoint-formats.md §1.6, §2.9; PruMUX ``utils/cofi_utils.py``): it folds (possibly soft) masks
into the full weights with upstream's asymmetries and then slices, turning a B/E directory into an A/D
directory (docs/checkpoint-formats.md Q17 oracle). It fixes Q6/Q7 (any depth/width) and implements the Q8 extension (hidden
pruning with ``mlp``/``index`` demux and ``random_ortho`` mux).

Everything here is plain torch; nothing from ``prumux_compile.passes``, ``kernels`` or ``reference`` is
imported, so agreement with those modules means something.
"""
from __future__ import annotations

import json
import math
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from prumux_compile.checkpoint import DEMUX_VARIANTS, FAMILIES, MUX_VARIANTS, read_raw
from prumux_compile.errors import CheckpointError, InputError

MUXED_FAMILIES = ("prumux_compressed", "prumux_masked", "muxplm")
MASKED_FAMILIES = ("prumux_masked", "cofi_masked")
COMPRESSED_FAMILIES = ("prumux_compressed", "cofi_compressed")
#: The three names upstream stores every shared demux-module tensor under (docs/checkpoint-formats.md §1.4).
DEMUX_ALIASES = ("demux_module", "demultiplexer.demux_module", "retrieval_head.demux_module")
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_ARCHITECTURES = {
    "prumux_compressed": "MuxedBertForSequenceClassification",
    "prumux_masked": "MuxedBertForSequenceClassification",
    "muxplm": "MuxedBertForSequenceClassification",
    "cofi_compressed": "CoFiBertForSequenceClassification",
    "cofi_masked": "CoFiBertForSequenceClassification",
    "bert": "BertForSequenceClassification",
}
_WORD = "bert.embeddings.word_embeddings.weight"
_DECODER = "retrieval_head.decoder.weight"


# ------------------------------------------------------------------------------------------------
# Specs and results


@dataclass
class SynthSpec:
    """What :func:`write_checkpoint` writes. Sizes are the ORIGINAL (unpruned) sizes.

    Attributes:
        family: one of :data:`prumux_compile.checkpoint.FAMILIES`.
        num_layers, hidden, heads, ffn, vocab, max_pos: original sizes (head size = hidden / heads).
        num_labels: classifier width C.
        num_instances: N; forced to 1 for ``cofi_*`` / ``bert``.
        muxing_variant, demuxing_variant, num_hidden_demux_layers, legacy_demuxing: docs/checkpoint-formats.md §1.3
        config fields
            (``num_hidden_demux_layers=None`` omits the field, upstream then uses 2).
        heads_kept: per layer, ORIGINAL head ids kept (None = all; ``[]`` = attention removed).
        ffn_kept: per layer, original FFN dims kept (``[]`` = FFN removed).
        hidden_kept: original hidden dims kept (None = all).
        soft_masks: masked families only: kept z values drawn uniformly in [0.2, 0.99] instead of 1.
        layer_z_only: masked families only, fault F3 in docs/field-faults.md: e.g. ``[("head", 1)]`` writes
            ``head_layer_z[1] = 1`` (soft if ``soft_masks``) with every ``head_z[1]`` = 0;
            ``("mlp", i)`` likewise ``mlp_z[i]`` != 0 with every ``intermediate_z[i]`` = 0.
        safetensors: write ``model.safetensors`` (shared tensors keep one name, as HF does) instead of
            ``pytorch_model.bin``.
        safetensors_tied_name: which name keeps the tied word embeddings in a safetensors file of the
            B/C families: ``"word_embeddings"`` or ``"decoder"`` (``retrieval_head.decoder.weight``).
        legacy_ln_names: LayerNorm parameters named ``gamma``/``beta``.
        demux_alias: ``"all"`` (the three aliases of docs/checkpoint-formats.md §1.4, as upstream) or one of
        :data:`DEMUX_ALIASES`.
        seed: seed of every random draw.
        hidden_act: ``config.hidden_act`` (field fault F22 in docs/field-faults.md); the weights do not depend on it.
        layer_norm_eps: ``config.layer_norm_eps``.
        type_vocab_size: rows of the token-type table (and ``config.type_vocab_size``; field fault F20 in docs/field-faults.md).
        key_prefix: a wrapper prefix put in front of every state-dict key, e.g. ``"module."`` as
            DataParallel saves it (field fault F21 in docs/field-faults.md).
        shards: > 1 splits the weights into that many shards plus the index file HF writes
            (``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``, or
            ``pytorch_model-0000k-of-0000n.bin`` + ``pytorch_model.bin.index.json``; field fault F25 in docs/field-faults.md).
        config_overrides: entries merged into ``config.json`` last (any field, any value).
        broken_file: replace a file by something that is not a checkpoint (field fault F28 in docs/field-faults.md):
            ``"lfs-pointer"``, ``"empty"``, ``"text"``, ``"random"`` (bytes), ``"plain-pickle"`` (a pickle
            that is not torch's format), ``"code-pickle"`` (a pickle that calls a function when loaded),
            ``"truncated"`` (the first half of the file).
        broken_target: which file ``broken_file`` replaces: ``"weights"`` (the weights file; the first shard
            when sharded) or ``"zs"`` (``zs.pt``, masked families).
    """

    family: str
    num_layers: int = 2
    hidden: int = 32
    heads: int = 4
    ffn: int = 64
    vocab: int = 64
    max_pos: int = 64
    num_labels: int = 3
    num_instances: int = 2
    muxing_variant: str = "gaussian_hadamard"
    demuxing_variant: str = "index_pos"
    num_hidden_demux_layers: int | None = 3
    legacy_demuxing: bool = False
    heads_kept: list[list[int]] | None = None
    ffn_kept: list[list[int]] | None = None
    hidden_kept: list[int] | None = None
    soft_masks: bool = False
    layer_z_only: list[tuple[str, int]] = field(default_factory=list)
    safetensors: bool = False
    safetensors_tied_name: str = "word_embeddings"
    legacy_ln_names: bool = False
    demux_alias: str = "all"
    seed: int = 0
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 2
    key_prefix: str = ""
    shards: int = 0
    config_overrides: dict = field(default_factory=dict)
    broken_file: str | None = None
    broken_target: str = "weights"


#: Kinds of :attr:`SynthSpec.broken_file`.
BROKEN_FILE_KINDS = ("lfs-pointer", "empty", "text", "random", "plain-pickle", "code-pickle", "truncated")


@dataclass
class KeptStructure:
    """Kept structure in ORIGINAL indices, ascending (docs/checkpoint-formats.md §1.4: slicing preserves order).

    Attributes:
        heads_kept: per layer, kept head ids (``[]`` = attention sublayer removed).
        ffn_kept: per layer, kept FFN dims (``[]`` = FFN sublayer removed).
        hidden_kept: kept hidden dims K.
    """

    heads_kept: list[list[int]]
    ffn_kept: list[list[int]]
    hidden_kept: list[int]

    @property
    def head_counts(self) -> list[int]:
        """h_i per layer."""
        return [len(h) for h in self.heads_kept]

    @property
    def ffn_counts(self) -> list[int]:
        """f_i per layer."""
        return [len(f) for f in self.ffn_kept]

    @property
    def hidden_width(self) -> int:
        """d' = |K|."""
        return len(self.hidden_kept)

    def to_json(self) -> dict:
        """Plain-JSON form (lists of ints)."""
        return {
            "heads_kept": [list(h) for h in self.heads_kept],
            "ffn_kept": [list(f) for f in self.ffn_kept],
            "hidden_kept": list(self.hidden_kept),
            "heads_per_layer": self.head_counts,
            "ffn_per_layer": self.ffn_counts,
            "hidden_width": self.hidden_width,
        }


@dataclass
class SynthInfo:
    """What was actually written.

    Attributes:
        path: the checkpoint directory.
        family: the family written (what :func:`~prumux_compile.checkpoint.read_raw` detects, except that
            an unpruned ``cofi_compressed`` checkpoint is indistinguishable from ``bert``).
        num_instances: N (1 for CoFi / BERT).
        num_layers, hidden, heads, ffn, head_size: original sizes.
        structure: the effective kept structure (for masked families: what ``prune_model_with_z`` keeps,
            i.e. heads with ``head_z * head_layer_z != 0`` and FFN dims with ``intermediate_z * mlp_z != 0``).
        zs: the masks written to ``zs.pt`` (float32), or None.
        sparsity: CoFi sparsity of ``structure`` (:func:`cofi_sparsity`).
    """

    path: Path
    family: str
    num_instances: int
    num_layers: int
    hidden: int
    heads: int
    ffn: int
    head_size: int
    structure: KeptStructure
    zs: dict[str, torch.Tensor] | None
    sparsity: float

    @property
    def heads_kept(self) -> list[list[int]]:
        return self.structure.heads_kept

    @property
    def ffn_kept(self) -> list[list[int]]:
        return self.structure.ffn_kept

    @property
    def hidden_kept(self) -> list[int]:
        return self.structure.hidden_kept


def cofi_sparsity(structure: KeptStructure, num_layers: int, hidden: int, ffn: int, head_size: int) -> float:
    """CoFi/L0Module sparsity of a kept structure (docs/checkpoint-formats.md §6 "Sparsity accounting").

    prunable = L*(4d^2 + 4d) + L*(2dF + 5d); remaining = 4*dh*sum_i(h_i)*d' + 2*sum_i(f_i)*d' (no biases);
    sparsity = 1 - remaining / prunable. With dh = 64 the first term is docs/checkpoint-formats.md §6's 256*sum(h_i)*d'.

    Args:
        structure: kept heads / FFN dims / hidden dims.
        num_layers, hidden, ffn, head_size: original L, d, F, dh.

    Returns:
        sparsity as a float in (-inf, 1]; 1 - (4d+5d terms)/prunable ~ 0 for an unpruned model.
    """
    d, L = hidden, num_layers
    prunable = L * (4 * d * d + 4 * d) + L * (2 * d * ffn + 5 * d)
    dp = structure.hidden_width
    remaining = 4 * head_size * sum(structure.head_counts) * dp + 2 * sum(structure.ffn_counts) * dp
    return 1.0 - remaining / prunable


# ------------------------------------------------------------------------------------------------
# Seeded draws


class _Draw:
    """Per-tensor seeded draws: the value of a tensor depends only on (seed, name, shape)."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def _gen(self, name: str) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + zlib.crc32(name.encode())) % (2**62))

    def normal(self, name: str, shape, std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=self._gen(name), dtype=torch.float32) * std + mean

    def uniform(self, name: str, shape, lo: float, hi: float) -> torch.Tensor:
        return torch.rand(shape, generator=self._gen(name), dtype=torch.float32) * (hi - lo) + lo


def _std(fan_in: int) -> float:
    """Weight std: 1/sqrt(fan_in) clipped to the BERT-like range [0.02, 0.2] (activations stay O(1))."""
    return min(0.2, max(0.02, 1.0 / math.sqrt(fan_in)))


def _linear(sd: dict, r: _Draw, name: str, out_f: int, in_f: int) -> None:
    sd[f"{name}.weight"] = r.normal(f"{name}.weight", (out_f, in_f), _std(in_f))
    sd[f"{name}.bias"] = r.normal(f"{name}.bias", (out_f,), 0.05)


def _layer_norm(sd: dict, r: _Draw, name: str, width: int) -> None:
    sd[f"{name}.weight"] = r.normal(f"{name}.weight", (width,), 0.1, mean=1.0)
    sd[f"{name}.bias"] = r.normal(f"{name}.bias", (width,), 0.1)


def gaussian_hadamard_vectors(num_instances: int, hidden: int, generator: torch.Generator, norm: float = 1.0):
    """Upstream ``random_encoding``: Gaussian rows scaled to L2 norm ``norm`` (MUX-PLM / PruMUX
    ``utils_pretraining.random_encoding``; docs/checkpoint-formats.md §2.3). Returns float32 [N, d]."""
    g = torch.randn((num_instances, hidden), generator=generator, dtype=torch.float32)
    return g / g.norm(dim=1, keepdim=True) * norm


def binary_hadamard_vectors(num_instances: int, hidden: int) -> torch.Tensor:
    """Upstream ``binary_encoding`` with epsilon 0: chunk = d div N, instance n owns
    [n*chunk, (n+1)*chunk), the last chunk extends to d (docs/checkpoint-formats.md §2.3). Returns float32 0/1 [N, d]."""
    out = torch.zeros(num_instances, hidden)
    chunk = hidden // num_instances
    for n in range(num_instances):
        end = hidden if n == num_instances - 1 else (n + 1) * chunk
        out[n, n * chunk : end] = 1.0
    return out


def random_orthogonal(num_instances: int, hidden: int, generator: torch.Generator) -> torch.Tensor:
    """N Haar-random orthogonal [d, d] matrices (QR of a Gaussian with the sign fix); float32 [N, d, d]."""
    mats = []
    for _ in range(num_instances):
        a = torch.randn((hidden, hidden), generator=generator, dtype=torch.float64)
        q, rr = torch.linalg.qr(a)
        q = q * torch.sign(torch.diagonal(rr)).unsqueeze(0)
        mats.append(q.to(torch.float32))
    return torch.stack(mats)


# ------------------------------------------------------------------------------------------------
# Validation


def _check_spec(spec: SynthSpec) -> None:
    def bad(msg: str):
        raise InputError(f"SynthSpec: {msg}")

    if spec.family not in FAMILIES:
        bad(f"unknown family {spec.family!r}; expected one of {', '.join(FAMILIES)}")
    for name in ("num_layers", "hidden", "heads", "ffn", "vocab", "max_pos", "num_labels", "num_instances"):
        if int(getattr(spec, name)) < 1:
            bad(f"{name} must be >= 1, got {getattr(spec, name)}")
    if spec.hidden % spec.heads:
        bad(f"hidden ({spec.hidden}) must be a multiple of heads ({spec.heads})")
    if spec.seed < 0:
        bad(f"seed must be >= 0, got {spec.seed}")
    if spec.family in MUXED_FAMILIES:
        if spec.muxing_variant not in MUX_VARIANTS:
            bad(f"unknown muxing_variant {spec.muxing_variant!r}; supported: {', '.join(MUX_VARIANTS)}")
        if spec.demuxing_variant not in DEMUX_VARIANTS:
            bad(f"unknown demuxing_variant {spec.demuxing_variant!r}; supported: {', '.join(DEMUX_VARIANTS)}")
        if spec.demuxing_variant == "index_pos" and spec.num_hidden_demux_layers is not None:
            if spec.num_hidden_demux_layers < 2:
                bad("num_hidden_demux_layers must be >= 2 for index_pos (dense_1 alone cannot feed pre_decoder)")
    if spec.demux_alias != "all" and spec.demux_alias not in DEMUX_ALIASES:
        bad(f"demux_alias {spec.demux_alias!r}; expected 'all' or one of {', '.join(DEMUX_ALIASES)}")
    if spec.safetensors_tied_name not in ("word_embeddings", "decoder"):
        bad("safetensors_tied_name must be 'word_embeddings' or 'decoder'")
    if int(spec.type_vocab_size) < 1 or int(spec.shards) < 0:
        bad("type_vocab_size must be >= 1 and shards >= 0")
    if spec.key_prefix and not spec.key_prefix.endswith("."):
        bad(f"key_prefix {spec.key_prefix!r} must end with '.'")
    if spec.broken_file is not None and spec.broken_file not in BROKEN_FILE_KINDS:
        bad(f"broken_file {spec.broken_file!r}; expected one of {', '.join(BROKEN_FILE_KINDS)}")
    if spec.broken_target not in ("weights", "zs") or (spec.broken_target == "zs"
                                                       and spec.family not in MASKED_FAMILIES):
        bad("broken_target must be 'weights', or 'zs' for a masked family")
    pruned = spec.heads_kept is not None or spec.ffn_kept is not None or spec.hidden_kept is not None
    if spec.family in ("muxplm", "bert") and pruned:
        full = _normalise(spec)
        if full.head_counts != [spec.heads] * spec.num_layers or full.ffn_counts != [spec.ffn] * spec.num_layers \
                or full.hidden_width != spec.hidden:
            bad(f"family {spec.family} is unpruned; heads_kept/ffn_kept/hidden_kept must keep everything")
    if spec.family not in MASKED_FAMILIES and (spec.soft_masks or spec.layer_z_only):
        bad(f"soft_masks / layer_z_only apply to masked families only ({', '.join(MASKED_FAMILIES)})")
    for kind, layer in spec.layer_z_only:
        if kind not in ("head", "mlp"):
            bad(f"layer_z_only kind {kind!r}; expected 'head' or 'mlp'")
        if not 0 <= int(layer) < spec.num_layers:
            bad(f"layer_z_only layer {layer} out of range 0..{spec.num_layers - 1}")
        kept = spec.heads_kept if kind == "head" else spec.ffn_kept
        if kept is not None and kept[int(layer)]:
            bad(f"layer_z_only ({kind!r}, {layer}) needs {kind} kept list [] (its fine masks are all 0)")


def _norm_ids(ids, size: int, what: str) -> list[int]:
    out = sorted({int(i) for i in ids})
    if len(out) != len(list(ids)):
        raise InputError(f"SynthSpec: {what} has duplicate ids")
    if out and not (0 <= out[0] and out[-1] < size):
        raise InputError(f"SynthSpec: {what} ids must lie in 0..{size - 1}")
    return out


def _normalise(spec: SynthSpec) -> KeptStructure:
    L = spec.num_layers
    for name in ("heads_kept", "ffn_kept"):
        val = getattr(spec, name)
        if val is not None and len(val) != L:
            raise InputError(f"SynthSpec: {name} needs one list per layer ({L}), got {len(val)}")
    heads = [list(range(spec.heads)) if spec.heads_kept is None else
             _norm_ids(spec.heads_kept[i], spec.heads, f"heads_kept[{i}]") for i in range(L)]
    ffn = [list(range(spec.ffn)) if spec.ffn_kept is None else
           _norm_ids(spec.ffn_kept[i], spec.ffn, f"ffn_kept[{i}]") for i in range(L)]
    hidden = (list(range(spec.hidden)) if spec.hidden_kept is None
              else _norm_ids(spec.hidden_kept, spec.hidden, "hidden_kept"))
    if not hidden:
        raise InputError("SynthSpec: hidden_kept must keep at least one dim")
    for kind, layer in spec.layer_z_only:
        (heads if kind == "head" else ffn)[int(layer)] = []
    return KeptStructure(heads, ffn, hidden)


# ------------------------------------------------------------------------------------------------
# Full (unpruned) model in canonical names


def _full_state_dict(spec: SynthSpec) -> dict[str, torch.Tensor]:
    """Full-shape tensors of the family's B/C/E/F layout (canonical names, demux under ``demux_module.``)."""
    r = _Draw(spec.seed)
    d, F, L, V, C = spec.hidden, spec.ffn, spec.num_layers, spec.vocab, spec.num_labels
    fam = spec.family
    muxed = fam in MUXED_FAMILIES
    N = spec.num_instances if muxed else 1
    sd: dict[str, torch.Tensor] = {}
    sd[_WORD] = r.normal(_WORD, (V, d), 0.2)
    sd["bert.embeddings.position_embeddings.weight"] = r.normal("pos", (spec.max_pos, d), 0.2)
    sd["bert.embeddings.token_type_embeddings.weight"] = r.normal("type", (spec.type_vocab_size, d), 0.2)
    sd["bert.embeddings.position_ids"] = torch.arange(spec.max_pos, dtype=torch.int64).unsqueeze(0)
    _layer_norm(sd, r, "bert.embeddings.LayerNorm", d)
    for i in range(L):
        p = f"bert.encoder.layer.{i}."
        for m in ("query", "key", "value"):
            _linear(sd, r, p + f"attention.self.{m}", d, d)
        _linear(sd, r, p + "attention.output.dense", d, d)
        _layer_norm(sd, r, p + "attention.output.LayerNorm", d)
        _linear(sd, r, p + "intermediate.dense", F, d)
        _linear(sd, r, p + "output.dense", d, F)
        _layer_norm(sd, r, p + "output.LayerNorm", d)
    if fam != "muxplm":
        _linear(sd, r, "bert.pooler.dense", d, d)
    _linear(sd, r, "classifier", C, d)
    if fam in ("prumux_masked", "prumux_compressed", "cofi_masked", "cofi_compressed"):
        _linear(sd, r, "layer_transformation", d, d)
    if not muxed:
        return sd
    mv = spec.muxing_variant
    if mv == "gaussian_hadamard":
        sd["instance_embedding"] = gaussian_hadamard_vectors(N, d, r._gen("instance_embedding"))
    elif mv == "binary_hadamard":
        sd["instance_embedding"] = binary_hadamard_vectors(N, d)
    else:
        sd["instance_embedding"] = random_orthogonal(N, d, r._gen("instance_embedding"))
    dv = spec.demuxing_variant
    kd = 2 if spec.num_hidden_demux_layers is None else spec.num_hidden_demux_layers
    if dv == "index_pos":
        sd["demux_module.demux_instance_embedding"] = r.normal("demux_instance_embedding", (N, d), 1.0)
        _linear(sd, r, "demux_module.dense_1", d, 2 * d)
        for k in range(2, kd + 1):
            _linear(sd, r, f"demux_module.dense_{k}", d, d)
        for k in range(1, kd + 1):
            _layer_norm(sd, r, f"demux_module.layer_norm_{k}", d)
        _linear(sd, r, "demultiplexer.pre_decoder", d, d)
        _layer_norm(sd, r, "demultiplexer.pre_decoder_layer_norm", d)
        _linear(sd, r, "retrieval_head.pre_decoder", d, d)
        _layer_norm(sd, r, "retrieval_head.pre_decoder_layer_norm", d)
    elif dv == "mlp":
        for n in range(N):
            _linear(sd, r, f"demux_module.dense_{n}", d, d)
            _layer_norm(sd, r, f"demux_module.layer_norm_{n}", d)
        _linear(sd, r, "demultiplexer.dense_before_out_proj", d, d)
        _layer_norm(sd, r, "demultiplexer.layernorm", d)
        _linear(sd, r, "retrieval_head.dense_pre_vocab", d, d)
        _layer_norm(sd, r, "retrieval_head.layer_norm_pre_vocab", d)
    else:  # index
        _linear(sd, r, "demultiplexer.dense", d, 2 * d)
        _layer_norm(sd, r, "demultiplexer.layer_norm", d)
        _linear(sd, r, "retrieval_head.dense", d, 2 * d)
        _layer_norm(sd, r, "retrieval_head.layer_norm", d)
    # HF weight tying: the MLM decoder IS the word-embedding tensor; the decoder bias IS retrieval_head.bias.
    sd[_DECODER] = sd[_WORD]
    sd["retrieval_head.bias"] = r.normal("retrieval_head.bias", (V,), 0.05)
    sd["retrieval_head.decoder.bias"] = sd["retrieval_head.bias"]
    return sd


# ------------------------------------------------------------------------------------------------
# Direct slicing (the compressed layout of docs/checkpoint-formats.md §1.4)


def _rows(head_ids: list[int], dh: int) -> torch.Tensor:
    if not head_ids:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([torch.arange(h * dh, (h + 1) * dh) for h in head_ids])


def slice_state_dict(full: dict[str, torch.Tensor], structure: KeptStructure, head_size: int,
                     demuxing_variant: str | None = None) -> dict[str, torch.Tensor]:
    """Slice a full-shape state dict (canonical names) to the compressed layout of docs/checkpoint-formats.md §1.4 (families A/D).

    Binary masks only: values are copied, never scaled. Quirks reproduced: a layer without heads has no
    ``attention.self.*`` / ``attention.output.dense.*`` keys but keeps its [d] attention LayerNorm (Q14 in docs/checkpoint-formats.md);
    a layer without FFN dims has no ``intermediate.dense`` / ``output.dense`` keys while its output
    LayerNorm is still sliced to [d']; pooler and ``layer_transformation`` input columns are sliced;
    hadamard ``instance_embedding`` [N, d'] (random_ortho: rows and columns K, the Q8 in docs/checkpoint-formats.md extension);
    index_pos ``demux_instance_embedding`` [N, d'] and ``dense_1`` [d, 2d'] (both halves); mlp
    ``demux_module.dense_n`` [d, d'] and index ``demultiplexer.dense`` [d, 2d'] (Q8 in docs/checkpoint-formats.md extension); the
    tied retrieval decoder stays a full [V, d] table with the pruned dims zeroed (what upstream's binary
    ``update_params`` leaves on the shared Parameter; the tie is broken by slicing).

    Args:
        full: name -> tensor, full shapes (d = word_embeddings.shape[1]).
        structure: kept heads / FFN dims / hidden dims (original ids, ascending).
        head_size: dh.
        demuxing_variant: ``index_pos`` / ``index`` / ``mlp`` for muxed models (needed to tell index_pos
            ``dense_1`` from mlp ``dense_1``); None for CoFi/BERT.

    Returns:
        a new dict; tensors are fresh (no storage shared with ``full``).
    """
    d = full[_WORD].shape[1]
    K = torch.tensor(structure.hidden_kept, dtype=torch.long)
    K2 = torch.cat([K, K + d])
    out: dict[str, torch.Tensor] = {}
    layer_keys: set[str] = set()
    for i, (hk, fk) in enumerate(zip(structure.heads_kept, structure.ffn_kept)):
        p = f"bert.encoder.layer.{i}."
        rows = _rows(hk, head_size)
        f_idx = torch.tensor(fk, dtype=torch.long)
        names = [p + s for s in (
            "attention.self.query.weight", "attention.self.query.bias", "attention.self.key.weight",
            "attention.self.key.bias", "attention.self.value.weight", "attention.self.value.bias",
            "attention.output.dense.weight", "attention.output.dense.bias", "attention.output.LayerNorm.weight",
            "attention.output.LayerNorm.bias", "intermediate.dense.weight", "intermediate.dense.bias",
            "output.dense.weight", "output.dense.bias", "output.LayerNorm.weight", "output.LayerNorm.bias")]
        layer_keys.update(names)
        if hk:
            for m in ("query", "key", "value"):
                out[p + f"attention.self.{m}.weight"] = full[p + f"attention.self.{m}.weight"][rows][:, K].clone()
                out[p + f"attention.self.{m}.bias"] = full[p + f"attention.self.{m}.bias"][rows].clone()
            out[p + "attention.output.dense.weight"] = full[p + "attention.output.dense.weight"][K][:, rows].clone()
            out[p + "attention.output.dense.bias"] = full[p + "attention.output.dense.bias"][K].clone()
            for s in ("weight", "bias"):
                out[p + f"attention.output.LayerNorm.{s}"] = full[p + f"attention.output.LayerNorm.{s}"][K].clone()
        else:
            for s in ("weight", "bias"):
                out[p + f"attention.output.LayerNorm.{s}"] = full[p + f"attention.output.LayerNorm.{s}"].clone()
        if fk:
            out[p + "intermediate.dense.weight"] = full[p + "intermediate.dense.weight"][f_idx][:, K].clone()
            out[p + "intermediate.dense.bias"] = full[p + "intermediate.dense.bias"][f_idx].clone()
            out[p + "output.dense.weight"] = full[p + "output.dense.weight"][K][:, f_idx].clone()
            out[p + "output.dense.bias"] = full[p + "output.dense.bias"][K].clone()
        for s in ("weight", "bias"):
            out[p + f"output.LayerNorm.{s}"] = full[p + f"output.LayerNorm.{s}"][K].clone()
    for key, t in full.items():
        if key in layer_keys or key.startswith("bert.encoder.layer."):
            if key not in layer_keys:
                raise CheckpointError(f"slice_state_dict: unexpected encoder key {key}")
            continue
        if key in (_WORD, "bert.embeddings.position_embeddings.weight", "bert.embeddings.token_type_embeddings.weight"):
            out[key] = t[:, K].clone()
        elif key.startswith("bert.embeddings.LayerNorm."):
            out[key] = t[K].clone()
        elif key == "instance_embedding":
            out[key] = t[:, K].clone() if t.dim() == 2 else t[:, K][:, :, K].clone()
        elif key == "demux_module.demux_instance_embedding":
            out[key] = t[:, K].clone()
        elif key == "demux_module.dense_1.weight" and demuxing_variant == "index_pos":
            out[key] = t[:, K2].clone()
        elif demuxing_variant == "mlp" and key.startswith("demux_module.dense_") and key.endswith(".weight"):
            out[key] = t[:, K].clone()
        elif key == "demultiplexer.dense.weight" and demuxing_variant == "index":
            out[key] = t[:, K2].clone()
        elif key in ("bert.pooler.dense.weight", "layer_transformation.weight"):
            out[key] = t[:, K].clone()
        elif key == _DECODER:
            keep = torch.zeros(d)
            keep[K] = 1.0
            out[key] = t * keep  # full [V, d] table, pruned dims zeroed: binary update_params on the tie
        else:
            out[key] = t
    return out


# ------------------------------------------------------------------------------------------------
# Masks


def _masks(spec: SynthSpec, structure: KeptStructure) -> dict[str, torch.Tensor]:
    """zs.pt of docs/checkpoint-formats.md §1.5 for a structure: pruned entries exactly 0, kept 1 or soft in [0.2, 0.99]."""
    L, H, F, d = spec.num_layers, spec.heads, spec.ffn, spec.hidden
    r = _Draw(spec.seed)

    def kept_values(name: str, shape) -> torch.Tensor:
        if spec.soft_masks:
            return r.uniform(f"zs.{name}", shape, 0.2, 0.99)
        return torch.ones(shape)

    head_z = torch.zeros(L, H)
    int_z = torch.zeros(L, F)
    hv, iv = kept_values("head_z", (L, H)), kept_values("intermediate_z", (L, F))
    for i in range(L):
        hk = torch.tensor(structure.heads_kept[i], dtype=torch.long)
        fk = torch.tensor(structure.ffn_kept[i], dtype=torch.long)
        head_z[i, hk] = hv[i, hk]
        int_z[i, fk] = iv[i, fk]
    hlv, mv = kept_values("head_layer_z", (L,)), kept_values("mlp_z", (L,))
    head_layer_z = torch.where(torch.tensor(structure.head_counts) > 0, hlv, torch.zeros(L))
    mlp_z = torch.where(torch.tensor(structure.ffn_counts) > 0, mv, torch.zeros(L))
    for kind, layer in spec.layer_z_only:
        (head_layer_z if kind == "head" else mlp_z)[int(layer)] = (hlv if kind == "head" else mv)[int(layer)]
    hidden_z = torch.zeros(d)
    K = torch.tensor(structure.hidden_kept, dtype=torch.long)
    hidden_z[K] = kept_values("hidden_z", (d,))[K]
    return {
        "head_z": head_z.reshape(L, 1, H, 1, 1),
        "head_layer_z": head_layer_z,
        "intermediate_z": int_z.reshape(L, 1, 1, F),
        "mlp_z": mlp_z,
        "hidden_z": hidden_z,
    }


def binary_zs(structure: KeptStructure, num_layers: int, heads: int, ffn: int, hidden: int) -> dict[str, torch.Tensor]:
    """Binary ``zs.pt`` masks (docs/checkpoint-formats.md §1.5 keys and shapes) for a kept structure: 1 kept, exactly 0 pruned;
    ``head_layer_z`` / ``mlp_z`` are 0 for removed sublayers. float32."""
    spec = SynthSpec("prumux_masked", num_layers=num_layers, hidden=hidden, heads=heads, ffn=ffn)
    return _masks(spec, structure)


# ------------------------------------------------------------------------------------------------
# Writing


def _label_maps(num_labels: int) -> tuple[dict, dict]:
    names = {2: ["negative", "positive"], 3: ["entailment", "neutral", "contradiction"]}.get(
        num_labels, [f"LABEL_{i}" for i in range(num_labels)])
    return {str(i): n for i, n in enumerate(names)}, {n: i for i, n in enumerate(names)}


def build_config(family: str, *, num_layers: int, hidden: int, heads: int, ffn: int, vocab: int,
                 max_pos: int, num_labels: int, num_instances: int = 1, muxing_variant: str = "gaussian_hadamard",
                 demuxing_variant: str = "index_pos", num_hidden_demux_layers: int | None = 3,
                 legacy_demuxing: bool = False, pruned_heads: dict[str, list[int]] | None = None,
                 hidden_act: str = "gelu", layer_norm_eps: float = 1e-12, type_vocab_size: int = 2) -> dict:
    """``config.json`` as upstream writes it for ``family`` (docs/checkpoint-formats.md §1.3): ORIGINAL sizes, erf ``gelu``,
    ``layer_norm_eps`` 1e-12, id2label/label2id; mux fields for A/B/C; ``pruned_heads`` (JSON string keys,
    bookkeeping only) for A/D, omitted for B/C/E/F (Q13 in docs/checkpoint-formats.md); PruMUX training-only fields for A/B."""
    id2label, label2id = _label_maps(num_labels)
    cfg = {
        "architectures": [_ARCHITECTURES[family]],
        "model_type": "bert",
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": hidden_act,
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": ffn,
        "layer_norm_eps": layer_norm_eps,
        "max_position_embeddings": max_pos,
        "num_attention_heads": heads,
        "num_hidden_layers": num_layers,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "type_vocab_size": type_vocab_size,
        "vocab_size": vocab,
        "id2label": id2label,
        "label2id": label2id,
    }
    if family in MUXED_FAMILIES:
        cfg.update({
            "num_instances": num_instances,
            "muxing_variant": muxing_variant,
            "demuxing_variant": demuxing_variant,
            "legacy_demuxing": legacy_demuxing,
            "gaussian_hadamard_norm": 1.0,
            "binary_hadamard_epsilon": 0.0,
            "learn_muxing": False,
            "retrieval_loss_coeff": 0.0,
            "task_loss_coeff": 1.0,
        })
        if num_hidden_demux_layers is not None:
            cfg["num_hidden_demux_layers"] = num_hidden_demux_layers
    if family in ("prumux_compressed", "prumux_masked"):
        cfg.update({"do_layer_distill": True, "output_attentions": True, "output_hidden_states": True})
    if family in COMPRESSED_FAMILIES:
        cfg["pruned_heads"] = dict(pruned_heads or {})
    return cfg


def pruned_heads_bookkeeping(structure: KeptStructure, heads: int) -> dict[str, list[int]]:
    """HF ``prune_heads`` bookkeeping as saved by upstream: every layer -> sorted ORIGINAL pruned head ids
    (``[]`` when none), JSON string keys (docs/checkpoint-formats.md §1.3)."""
    return {str(i): sorted(set(range(heads)) - set(hk)) for i, hk in enumerate(structure.heads_kept)}


def with_aliases(sd: dict[str, torch.Tensor], alias: str = "all") -> dict[str, torch.Tensor]:
    """Store every canonical ``demux_module.*`` tensor under the chosen alias(es) (docs/checkpoint-formats.md §1.4); the three
    names of ``"all"`` share one tensor object, as in upstream ``pytorch_model.bin`` files."""
    prefixes = DEMUX_ALIASES if alias == "all" else (alias,)
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        if key.startswith("demux_module."):
            rest = key[len("demux_module."):]
            for pre in prefixes:
                out[f"{pre}.{rest}"] = t
        else:
            out[key] = t
    return out


def _legacy_ln(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, t in sd.items():
        module, _, leaf = key.rpartition(".")
        last = module.rpartition(".")[2].lower()
        if ("layernorm" in last or "layer_norm" in last) and leaf in ("weight", "bias"):
            key = f"{module}.{'gamma' if leaf == 'weight' else 'beta'}"
        out[key] = t
    return out


def _dedupe_for_safetensors(sd: dict[str, torch.Tensor], tied_name: str) -> dict[str, torch.Tensor]:
    """Keep one name per shared tensor (safetensors cannot store shared storage; HF drops duplicates)."""
    groups: dict[int, list[str]] = {}
    for key, t in sd.items():
        groups.setdefault(id(t), []).append(key)
    out = {}
    for names in groups.values():
        keep = min(names, key=lambda n: (len(n), n))
        if _WORD in names and _DECODER in names:
            keep = _DECODER if tied_name == "decoder" else _WORD
        out[keep] = sd[keep].contiguous()
    return {k: out[k] for k in sd if k in out}


def _prepare_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: already exists and is not an empty directory; choose a new output path")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_state_dir(out_dir: str | Path, config: dict, state_dict: dict[str, torch.Tensor],
                    zs: dict[str, torch.Tensor] | None = None, safetensors: bool = False,
                    tied_name: str = "word_embeddings", shards: int = 0) -> Path:
    """Write ``config.json`` + ``pytorch_model.bin`` (``torch.save``, shared tensors stay shared) or
    ``model.safetensors`` (one name per shared tensor), and ``zs.pt`` when ``zs`` is given.

    With ``shards > 1`` the weights go to that many shard files plus the index file, named as HF's
    ``save_pretrained`` names them (``model-00001-of-00002.safetensors`` + ``model.safetensors.index.json``
    with ``{"metadata": {"total_size"}, "weight_map": {key: shard}}``; ``pytorch_model-00001-of-00002.bin`` +
    ``pytorch_model.bin.index.json``). Keys are dealt to shards in order, in contiguous runs.

    Raises:
        InputError: ``out_dir`` exists and is not an empty directory.
    """
    out = _prepare_dir(out_dir)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    sd = _dedupe_for_safetensors(state_dict, tied_name) if safetensors else state_dict
    if shards > 1:
        _write_shards(out, sd, shards, safetensors)
    elif safetensors:
        from safetensors.torch import save_file

        save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(sd, out / "pytorch_model.bin")
    if zs is not None:
        torch.save({k: v.clone() for k, v in zs.items()}, out / "zs.pt")
    return out


def _write_shards(out: Path, sd: dict[str, torch.Tensor], shards: int, safetensors: bool) -> None:
    keys = list(sd)
    n = max(1, min(int(shards), len(keys)))
    stem, ext = ("model", "safetensors") if safetensors else ("pytorch_model", "bin")
    per = math.ceil(len(keys) / n)
    weight_map: dict[str, str] = {}
    total = 0
    for k in range(n):
        name = f"{stem}-{k + 1:05d}-of-{n:05d}.{ext}"
        part = {key: sd[key] for key in keys[k * per:(k + 1) * per]}
        if safetensors:
            from safetensors.torch import save_file

            save_file({key: t.contiguous() for key, t in part.items()}, str(out / name), metadata={"format": "pt"})
        else:
            torch.save({key: t.clone() for key, t in part.items()}, out / name)
        for key, t in part.items():
            weight_map[key] = name
            total += t.numel() * t.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / f"{stem}.{ext}.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def break_file(path: str | Path, kind: str, seed: int = 0) -> None:
    """Replace the file at ``path`` by something that is not a checkpoint (:data:`BROKEN_FILE_KINDS`;
    field fault F28 in docs/field-faults.md). A Git LFS pointer is the three lines git writes (about 130 bytes) with the real file's
    sha256 and size."""
    import hashlib
    import pickle

    path = Path(path)
    data = path.read_bytes() if path.exists() else b""
    if kind == "lfs-pointer":
        new = (f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\n"
               f"size {len(data)}\n").encode()
    elif kind == "empty":
        new = b""
    elif kind == "text":
        new = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"
    elif kind == "random":
        g = torch.Generator().manual_seed(int(seed))
        new = bytes(torch.randint(0, 256, (512,), generator=g, dtype=torch.uint8).tolist())
        new = b"\x13\x37" + new[2:]  # never a pickle / zip / text opening by chance
    elif kind == "plain-pickle":
        new = pickle.dumps({"weights": [1.0, 2.0]}, protocol=4)
    elif kind == "code-pickle":
        new = pickle.dumps({"weights": _CallsPrint()}, protocol=4)
    elif kind == "truncated":
        new = data[: len(data) // 2]
    else:
        raise InputError(f"break_file: unknown kind {kind!r}; expected one of {', '.join(BROKEN_FILE_KINDS)}")
    path.write_bytes(new)


class _CallsPrint:
    """Pickles to a call of ``print`` (what a malicious or code-carrying pickle looks like)."""

    def __reduce__(self):
        return (print, ("code ran while unpickling",))


def write_checkpoint(out_dir: str | Path, spec: SynthSpec) -> SynthInfo:
    """Write a synthetic checkpoint directory of ``spec.family`` with seeded random weights.

    Layout per family (docs/checkpoint-formats.md §1.1, §1.3-1.5): ``config.json`` with original sizes; ``pytorch_model.bin``
    (or ``model.safetensors``); ``zs.pt`` for B/E. Weights are drawn like a BERT init (std
    1/sqrt(fan_in) clipped to [0.02, 0.2], LayerNorm gamma ~ 1 + 0.1 N(0,1), non-zero biases) so logits
    are O(1) and LayerNorms matter; hadamard vectors follow upstream ``random_encoding`` / ``binary_encoding``;
    ``random_ortho`` vectors are orthogonal [N, d, d].

    Args:
        out_dir: a new (or empty) directory.
        spec: what to write (:class:`SynthSpec`).

    Returns:
        :class:`SynthInfo` with the kept structure actually written.

    Raises:
        InputError: an inconsistent spec, or ``out_dir`` is a non-empty directory.
    """
    _check_spec(spec)
    structure = _normalise(spec)
    fam = spec.family
    muxed = fam in MUXED_FAMILIES
    N = spec.num_instances if muxed else 1
    dh = spec.hidden // spec.heads
    full = _full_state_dict(spec)
    zs = None
    if fam in COMPRESSED_FAMILIES:
        sd = slice_state_dict(full, structure, dh, spec.demuxing_variant if muxed else None)
    else:
        sd = full
        if fam in MASKED_FAMILIES:
            zs = _masks(spec, structure)
    if muxed:
        sd = with_aliases(sd, spec.demux_alias)
    if spec.legacy_ln_names:
        sd = _legacy_ln(sd)
    config = build_config(
        fam, num_layers=spec.num_layers, hidden=spec.hidden, heads=spec.heads, ffn=spec.ffn, vocab=spec.vocab,
        max_pos=spec.max_pos, num_labels=spec.num_labels, num_instances=N, muxing_variant=spec.muxing_variant,
        demuxing_variant=spec.demuxing_variant, num_hidden_demux_layers=spec.num_hidden_demux_layers,
        legacy_demuxing=spec.legacy_demuxing, pruned_heads=pruned_heads_bookkeeping(structure, spec.heads),
        hidden_act=spec.hidden_act, layer_norm_eps=spec.layer_norm_eps, type_vocab_size=spec.type_vocab_size)
    config.update(spec.config_overrides)
    if spec.key_prefix:
        sd = {spec.key_prefix + k: v for k, v in sd.items()}
    path = write_state_dir(out_dir, config, sd, zs, spec.safetensors, spec.safetensors_tied_name, spec.shards)
    if spec.broken_file is not None:
        if spec.broken_target == "zs":
            target = path / "zs.pt"
        else:
            target = sorted(p for p in path.iterdir() if p.name.startswith(("pytorch_model", "model"))
                            and not p.name.endswith(".json"))[0]
        break_file(target, spec.broken_file, spec.seed)
    return SynthInfo(path, fam, N, spec.num_layers, spec.hidden, spec.heads, spec.ffn, dh, structure, zs,
                     cofi_sparsity(structure, spec.num_layers, spec.hidden, spec.ffn, dh))


# ------------------------------------------------------------------------------------------------
# Upstream update_params + prune_model_with_z (independent re-implementation)


def compress_like_upstream(masked_dir: str | Path, out_dir: str | Path) -> SynthInfo:
    """Turn a full + zs checkpoint (B ``prumux_masked`` / E ``cofi_masked``) into its compressed family
    (A / D) the way upstream evaluation does: ``update_params`` then ``prune_model_with_z``
    (docs/checkpoint-formats.md §1.6, §2.9; PruMUX ``utils/cofi_utils.py``).

    Folding (soft z allowed): head_z (x dh) into rows of Wv and bv; head_layer_z into Wo and bo;
    intermediate_z into columns of W2; mlp_z into W2 and b2; hidden_z into the dims of the word, position
    and token-type tables and of ``instance_embedding`` (its last axis), into both halves of the index_pos
    ``dense_1`` input columns, into input columns of Wq, Wk, Wv, W1 and the pooler, into rows of Wo AND bo,
    into rows of W2 but NOT b2. LayerNorms, ``demux_instance_embedding``, ``layer_transformation`` and the
    classifier are not scaled. The tied retrieval decoder (when stored) receives the scaled full word table,
    as the shared Parameter does upstream.
    Pruning: heads with head_z*head_layer_z == 0 (a layer left with none loses q/k/v/o but keeps its [d]
    attention LayerNorm, Q14 in docs/checkpoint-formats.md), hidden dims with hidden_z == 0 (sliced before the FFN, so the output
    LayerNorm is always [d']), FFN dims with intermediate_z*mlp_z == 0. ``pruned_heads`` bookkeeping is
    written for every layer. Fixes Q6/Q7 in docs/checkpoint-formats.md (uses the config's depth and width) and extends Q8 (hidden
    pruning of mlp / index demux and random_ortho mux).

    Args:
        masked_dir: a B or E checkpoint directory.
        out_dir: a new (or empty) directory; receives config.json + pytorch_model.bin (+ tokenizer files
            found in ``masked_dir``).

    Returns:
        :class:`SynthInfo` of the written compressed checkpoint (``zs`` = the masks that were folded).

    Raises:
        CheckpointError: ``masked_dir`` is not a masked family, its masks miss keys or have wrong shapes,
            or its weights are not full width.
        InputError: ``out_dir`` is a non-empty directory.
    """
    raw = read_raw(masked_dir)
    if raw.family not in MASKED_FAMILIES:
        raise CheckpointError(f"{masked_dir}: family {raw.family} has no zs.pt masks; expected one of "
                              f"{', '.join(MASKED_FAMILIES)}")
    cfg = dict(raw.config)
    L, d, H = int(cfg["num_hidden_layers"]), int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    F = int(cfg["intermediate_size"])
    dh = d // H
    sd = {k: v.clone() for k, v in raw.state_dict.items()}
    if sd[_WORD].shape[1] != d:
        raise CheckpointError(f"{masked_dir}: word embeddings are {sd[_WORD].shape[1]} wide, config says {d}; "
                              "a full + zs checkpoint must hold unpruned weights")
    zs = raw.zs or {}
    expect = {"head_z": (L, H), "head_layer_z": (L,), "intermediate_z": (L, F), "mlp_z": (L,), "hidden_z": (d,)}
    z = {}
    for key, shape in expect.items():
        if key not in zs:
            raise CheckpointError(f"{masked_dir}/zs.pt: missing {key!r}")
        if zs[key].numel() != math.prod(shape):
            raise CheckpointError(f"{masked_dir}/zs.pt: {key} has {zs[key].numel()} entries, expected {shape}")
        z[key] = zs[key].reshape(shape).to(torch.float32)
    muxed = raw.family == "prumux_masked"
    demux = raw.demuxing_variant if muxed else None
    lay = [f"bert.encoder.layer.{i}." for i in range(L)]

    # ---- update_params ----
    for i, p in enumerate(lay):
        w2 = sd[p + "output.dense.weight"] * z["intermediate_z"][i]          # columns
        sd[p + "output.dense.weight"] = (w2.t() * z["mlp_z"][i]).t()
        sd[p + "output.dense.bias"] = sd[p + "output.dense.bias"] * z["mlp_z"][i]
    for i, p in enumerate(lay):
        zv = torch.repeat_interleave(z["head_z"][i], dh)
        sd[p + "attention.self.value.weight"] = (sd[p + "attention.self.value.weight"].t() * zv).t()
        sd[p + "attention.self.value.bias"] = sd[p + "attention.self.value.bias"] * zv
        sd[p + "attention.output.dense.weight"] = sd[p + "attention.output.dense.weight"] * z["head_layer_z"][i]
        sd[p + "attention.output.dense.bias"] = sd[p + "attention.output.dense.bias"] * z["head_layer_z"][i]
    hz = z["hidden_z"]
    for key in (_WORD, "bert.embeddings.position_embeddings.weight", "bert.embeddings.token_type_embeddings.weight"):
        sd[key] = sd[key] * hz
    if _DECODER in sd:
        # tied Parameter: update_params rewrites its .data for both names; pruning later replaces only the
        # embedding's Parameter, so the decoder keeps the scaled FULL table (the tie is broken there)
        sd[_DECODER] = sd[_WORD].clone()
    if muxed:
        sd["instance_embedding"] = sd["instance_embedding"] * hz             # last axis (input side)
        if demux == "index_pos":
            sd["demux_module.dense_1.weight"] = sd["demux_module.dense_1.weight"] * torch.cat([hz, hz])
        elif demux == "index":
            sd["demultiplexer.dense.weight"] = sd["demultiplexer.dense.weight"] * torch.cat([hz, hz])
        else:
            for n in range(raw.num_instances):
                sd[f"demux_module.dense_{n}.weight"] = sd[f"demux_module.dense_{n}.weight"] * hz
    for p in lay:
        for m in ("key", "query", "value"):
            sd[p + f"attention.self.{m}.weight"] = sd[p + f"attention.self.{m}.weight"] * hz
        sd[p + "attention.output.dense.weight"] = (sd[p + "attention.output.dense.weight"].t() * hz).t()
        sd[p + "attention.output.dense.bias"] = sd[p + "attention.output.dense.bias"] * hz
        sd[p + "intermediate.dense.weight"] = sd[p + "intermediate.dense.weight"] * hz
        sd[p + "output.dense.weight"] = (sd[p + "output.dense.weight"].t() * hz).t()
    if "bert.pooler.dense.weight" in sd:
        sd["bert.pooler.dense.weight"] = sd["bert.pooler.dense.weight"] * hz

    # ---- prune_model_with_z: heads ----
    pruned_heads: dict[str, list[int]] = {}
    heads_kept: list[list[int]] = []
    for i, p in enumerate(lay):
        prod = z["head_z"][i] * z["head_layer_z"][i]
        gone = torch.nonzero(prod == 0).flatten().tolist()
        keep = [h for h in range(H) if h not in gone]
        pruned_heads[str(i)] = gone
        heads_kept.append(keep)
        if not keep:
            for m in ("self.query", "self.key", "self.value", "output.dense"):
                del sd[p + f"attention.{m}.weight"], sd[p + f"attention.{m}.bias"]
            continue
        idx = torch.cat([torch.arange(h * dh, h * dh + dh) for h in keep])
        for m in ("query", "key", "value"):
            sd[p + f"attention.self.{m}.weight"] = sd[p + f"attention.self.{m}.weight"].index_select(0, idx)
            sd[p + f"attention.self.{m}.bias"] = sd[p + f"attention.self.{m}.bias"].index_select(0, idx)
        sd[p + "attention.output.dense.weight"] = sd[p + "attention.output.dense.weight"].index_select(1, idx)
    ffn_keep = [torch.nonzero((z["intermediate_z"][i] * z["mlp_z"][i]).flatten()).flatten() for i in range(L)]

    # ---- hidden ----
    K = torch.nonzero(hz).flatten()
    K2 = torch.cat([K, K + d])  # upstream hard-codes `index + 768` (Q7 in docs/checkpoint-formats.md)
    for key in (_WORD, "bert.embeddings.position_embeddings.weight", "bert.embeddings.token_type_embeddings.weight"):
        sd[key] = sd[key].index_select(1, K)
    for s in ("weight", "bias"):
        sd[f"bert.embeddings.LayerNorm.{s}"] = sd[f"bert.embeddings.LayerNorm.{s}"].index_select(0, K)
    if muxed:
        ie = sd["instance_embedding"].index_select(1, K)
        sd["instance_embedding"] = ie if ie.dim() == 2 else ie.index_select(2, K)  # Q8 in docs/checkpoint-formats.md extension for ortho
        if demux == "index_pos":
            sd["demux_module.demux_instance_embedding"] = sd["demux_module.demux_instance_embedding"].index_select(1, K)
            sd["demux_module.dense_1.weight"] = sd["demux_module.dense_1.weight"].index_select(1, K2)
        elif demux == "index":
            sd["demultiplexer.dense.weight"] = sd["demultiplexer.dense.weight"].index_select(1, K2)
        else:
            for n in range(raw.num_instances):
                sd[f"demux_module.dense_{n}.weight"] = sd[f"demux_module.dense_{n}.weight"].index_select(1, K)
    for i, p in enumerate(lay):  # every layer (Q6 in docs/checkpoint-formats.md: upstream loops range(0, 12))
        if p + "attention.self.query.weight" in sd:
            for m in ("query", "key", "value"):
                sd[p + f"attention.self.{m}.weight"] = sd[p + f"attention.self.{m}.weight"].index_select(1, K)
            sd[p + "attention.output.dense.weight"] = sd[p + "attention.output.dense.weight"].index_select(0, K)
            sd[p + "attention.output.dense.bias"] = sd[p + "attention.output.dense.bias"].index_select(0, K)
            for s in ("weight", "bias"):
                sd[p + f"attention.output.LayerNorm.{s}"] = sd[p + f"attention.output.LayerNorm.{s}"].index_select(0, K)
        sd[p + "intermediate.dense.weight"] = sd[p + "intermediate.dense.weight"].index_select(1, K)
        sd[p + "output.dense.weight"] = sd[p + "output.dense.weight"].index_select(0, K)
        sd[p + "output.dense.bias"] = sd[p + "output.dense.bias"].index_select(0, K)
        for s in ("weight", "bias"):
            sd[p + f"output.LayerNorm.{s}"] = sd[p + f"output.LayerNorm.{s}"].index_select(0, K)
    for key in ("bert.pooler.dense.weight", "layer_transformation.weight"):
        if key in sd:
            sd[key] = sd[key].index_select(1, K)

    # ---- FFN ----
    for i, p in enumerate(lay):
        keep = ffn_keep[i]
        if keep.numel() == 0:
            for m in ("intermediate.dense", "output.dense"):
                del sd[p + f"{m}.weight"], sd[p + f"{m}.bias"]
            continue
        sd[p + "intermediate.dense.weight"] = sd[p + "intermediate.dense.weight"].index_select(0, keep)
        sd[p + "intermediate.dense.bias"] = sd[p + "intermediate.dense.bias"].index_select(0, keep)
        sd[p + "output.dense.weight"] = sd[p + "output.dense.weight"].index_select(1, keep)

    family = "prumux_compressed" if muxed else "cofi_compressed"
    cfg["pruned_heads"] = pruned_heads
    for key in ("_name_or_path",):
        cfg.pop(key, None)
    if muxed:
        sd = with_aliases(sd, "all" if demux in ("index_pos", "mlp") else "demux_module")
    path = write_state_dir(out_dir, cfg, sd)
    src = Path(masked_dir)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, path / name)
    structure = KeptStructure(heads_kept, [k.tolist() for k in ffn_keep], K.tolist())
    return SynthInfo(path, family, raw.num_instances, L, d, H, F, dh, structure, z,
                     cofi_sparsity(structure, L, d, F, dh))
