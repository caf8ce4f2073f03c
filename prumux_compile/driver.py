"""The main job: checkpoints -> candidates -> measured, validated engines -> Auto-PruMUX choice -> outputs.

:func:`build` is the library call behind ``prumux-compile build``. For every checkpoint it runs the pass
pipeline, exports ``model.onnx``, builds an engine per requested backend through the one engine contract
(:mod:`prumux_compile.engines.base`; no backend is special here), validates the artifact against the float64
reference with the criteria of its (backend, precision) (exit 3 on failure), benchmarks it side by side with the
eager-PyTorch form of the same checkpoint on the same device (the physically pruned, unfused model — what
upstream ``evaluation.py`` runs), measures accuracy through the engine, then selects with Auto-PruMUX and writes
``OUT/`` atomically; the Triton repository receives the chosen artifact file itself, with the settings it was
measured under (fields: docs/report.md). Candidates run through an executor (:mod:`prumux_compile.executors`):
one after another in this process, or as compile and measure tasks on a Ray cluster.
"""
from __future__ import annotations

from prumux_compile.fsutil import output_tempdir, refuse_inputs_inside, require_writable_dir

import csv
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from prumux_compile.errors import EngineBuildError, InputError, NoCandidateError, PrumuxError, ValidationError

#: The cache stores and restores every file of a candidate folder (whatever its backend produced).
#: Bumped whenever candidate.json changes shape, so an older cache entry is never reused
#: (4: candidates have a precision; 5: ``artifact.files_sha256`` covers an OpenVINO IR's weights file).
_CACHE_LAYOUT = 5


@dataclass
class BuildOptions:
    """Options of :func:`build` (the CLI flags, kebab-cased there).

    Attributes:
        out: output folder (must not exist unless ``force``).
        backends: engine backends by registry name (``ort-cpu`` ...).
        backends_explicit: the user named the backends: an unavailable one is an error (exit 4), not a note.
        precisions: engine precisions to build (:data:`~prumux_compile.engines.base.PRECISIONS`); None = ``auto``:
            every precision a backend builds on this machine; ``("all",)`` = every (backend, precision) pair a
            backend builds here. With the default backend list each precision is built once, by the first backend
            that builds it; with named backends (``backends_explicit``) by each of them (:func:`candidate_plan`).
            Each (checkpoint, backend, precision) is one candidate. A reduced-precision candidate that fails its
            criteria is rejected with a warning under ``auto`` / ``all`` and fails the build when named.
        calibration_data: texts (a file ``--eval-data`` would read) for int8 calibration; None = the evaluation
            texts (``eval_data``), else the deterministic demo sentences.
        seq_len: compiled sequence length of multiplexed models and benchmark length (tokens).
        batch_sizes: benchmark batch sizes in input sequences; None = ``8·N`` per candidate.
        threads: intra-op threads for ONNX Runtime and PyTorch (the same for both sides).
        rounds / warmup: timed / untimed interleaved benchmark rounds.
        eval_data: labelled evaluation file (TSV, CSV, JSON Lines); refused without a label column unless
            ``eval_unlabelled``.
        eval_limit: use at most this many examples of it.
        accuracy_table: CSV ``checkpoint,accuracy`` of recorded accuracies (marked as recorded).
        max_accuracy_drop / min_accuracy: the budget (exactly one; default drop 0.01), each in [0, 1], in the
            task's metric (accuracy; Pearson's r for one-output regression heads). A drop larger than the
            baseline's value is clamped (floor 0), never an error.
        cache / cache_dir: reuse artifacts and measurements of unchanged candidates.
        triton_repo: also write the chosen model's Triton model repository there.
        triton_backend: ``onnxruntime`` (platform onnxruntime_onnx) or ``python`` (Python backend over ORT).
        triton_ensemble: also write the text ensemble (tokenizer, postprocess; :mod:`prumux_compile.triton.ensemble`)
            into ``OUT/model_repository`` when the chosen checkpoint has a tokenizer.
        force: replace an existing ``out`` (atomically).
        agreement_samples: inputs used for teacher agreement when there is no labelled data.
        eval_unlabelled: ``eval_data`` is used for its texts only (teacher agreement), labels or not.
        progress: called with a one-line stage message (``"<id>: export"``, ``"accuracy and selection"``, ...).
        on_candidate: called as ``(done, total, id, None)`` before each candidate and ``(done, total, id, info)``
            after it (``done`` counts finished candidates, ``total`` all of them).
        executor: where candidates run (:mod:`prumux_compile.executors`): ``"local"`` (this process, one after
            another), ``"ray"`` (a new local Ray instance), ``"ray:ADDRESS"`` (a Ray cluster: ``auto``,
            ``HOST:PORT``, ``ray://HOST:10001``), or an :class:`~prumux_compile.executors.Executor`.
        artifact_store: with Ray, a folder every node mounts at this path, through which candidate folders move
            between nodes and back (default: Ray's object store).
        hardware: with Ray, backend name (or ``"*"``: every backend) -> hardware kind: the candidate is compiled
            and measured only on nodes labelled ``prumux-hardware=<kind>``.
        require_all: with Ray, a candidate lost to worker faults (after its retry) fails the build (exit 7);
            otherwise the build goes on without it and reports it under ``executor.failed``.
    """

    out: Path
    backends: tuple[str, ...] = ("ort-cpu",)
    backends_explicit: bool = False
    precisions: tuple[str, ...] | None = None
    calibration_data: Path | None = None
    seq_len: int = 128
    batch_sizes: tuple[int, ...] | None = None
    threads: int = 2
    rounds: int = 5
    warmup: int = 2
    eval_data: Path | None = None
    eval_limit: int | None = None
    accuracy_table: Path | None = None
    max_accuracy_drop: float | None = None
    min_accuracy: float | None = None
    cache: bool = True
    cache_dir: Path | None = None
    triton_repo: Path | None = None
    triton_backend: str = "onnxruntime"
    triton_ensemble: bool = True
    force: bool = False
    agreement_samples: int = 128
    eval_unlabelled: bool = False
    progress: Callable[[str], None] | None = field(default=None, repr=False)
    on_candidate: Callable[[int, int, str, dict | None], None] | None = field(default=None, repr=False)
    executor: object = "local"
    artifact_store: Path | None = None
    hardware: dict[str, str] | None = None
    require_all: bool = False

    def __getstate__(self) -> dict:
        """What travels to another process (a cluster worker): the options without the callbacks and executor."""
        return {**self.__dict__, "progress": None, "on_candidate": None, "executor": None}


# ---------------------------------------------------------------------------------------------- inputs
def discover_checkpoints(paths: list[str | Path]) -> list[tuple[str, Path]]:
    """Checkpoint directories named by ``paths``: each path is a checkpoint (has ``config.json``) or a folder
    whose sub-folders are checkpoints (e.g. the demo grid, or a paper-style grid of N × sparsity).

    Returns:
        ``[(candidate id, path)]`` in the given order (sub-folders sorted by name); ids are unique.

    Raises:
        InputError: a path does not exist, or a folder holds no checkpoint.
    """
    found: list[tuple[str, Path]] = []
    for p in map(Path, paths):
        if not p.exists():
            raise InputError(f"{p}: no such checkpoint or folder")
        if (p / "config.json").is_file() or not p.is_dir():
            found.append((p.name, p))
            continue
        subs = sorted(d for d in p.iterdir() if d.is_dir() and (d / "config.json").is_file())
        if not subs:
            raise InputError(f"{p}: no checkpoints found (no config.json in it or in its sub-folders)")
        found.extend((d.name, d) for d in subs)
    if not found:
        raise InputError("no checkpoints given")
    ids: dict[str, int] = {}
    out = []
    for name, path in found:
        k = ids.get(name, 0)
        ids[name] = k + 1
        out.append((name if k == 0 else f"{name}-{k + 1}", path))
    return out


def read_accuracy_table(path: Path) -> dict[str, float]:
    """``checkpoint,accuracy`` CSV -> {checkpoint name or path: accuracy in [0, 1]}.

    Raises:
        InputError: missing file, missing columns, a value that is not a number in [0, 1].
    """
    if not path.is_file():
        raise InputError(f"{path}: accuracy table not found")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"checkpoint", "accuracy"} <= set(rows[0]):
        raise InputError(f"{path}: expected a CSV with columns 'checkpoint,accuracy'")
    table = {}
    for i, row in enumerate(rows, start=2):
        try:
            acc = float(row["accuracy"])
        except ValueError:
            raise InputError(f"{path}:{i}: accuracy {row['accuracy']!r} is not a number") from None
        if not 0.0 <= acc <= 1.0:
            raise InputError(f"{path}:{i}: accuracy {acc} outside [0, 1] (give fractions, not percent)")
        name = (row["checkpoint"] or "").strip()
        if name in table:
            raise InputError(f"{path}:{i}: checkpoint {name!r} appears twice; keep one accuracy per checkpoint")
        table[name] = acc
    return table


def _recorded(table: dict[str, float], cid: str, ckpt: Path) -> float | None:
    """The accuracy ``table`` records for candidate ``cid`` of checkpoint ``ckpt``: by id, then by the path as
    given, then by the folder name (a multi-backend id ``name@backend`` also by ``name``); None when absent."""
    for key in (cid, cid.split("@")[0], str(ckpt), Path(ckpt).name):
        if key in table:
            return table[key]
    return None


def demo_texts(n: int) -> list[str]:
    """``n`` deterministic English sentences (teacher-agreement inputs when no evaluation file is given)."""
    subjects = ["the film", "this restaurant", "my new phone", "the service", "our hotel room", "the concert",
                "that book", "the customer support", "the weather today", "the update"]
    verbs = ["was", "felt", "seemed", "turned out to be", "is honestly", "remains"]
    adjs = ["wonderful", "terrible", "surprisingly good", "a bit disappointing", "perfectly fine", "awful",
            "brilliant", "boring", "far better than expected", "not worth the money", "delightful"]
    tails = ["", " and I would go again", ", but the ending dragged", " for the price", " compared to last year",
             " according to everyone I asked"]
    out = []
    for i in range(n):
        s = (f"{subjects[i % len(subjects)]} {verbs[(i // 3) % len(verbs)]} {adjs[(i * 7) % len(adjs)]}"
             f"{tails[(i // 5) % len(tails)]}.")
        out.append(s[0].upper() + s[1:])
    return out


# ---------------------------------------------------------------------------------------------- helpers
def _log(opts: BuildOptions, msg: str) -> None:
    if opts.progress is not None:
        opts.progress(msg)


def _candidate_event(opts: BuildOptions, done: int, total: int, cid: str, info: dict | None) -> None:
    """Tell ``opts.on_candidate`` that candidate ``cid`` starts (``info`` None) or finished (its info)."""
    if opts.on_candidate is not None:
        opts.on_candidate(done, total, cid, info)


def _tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("prumux-compile")
    except PackageNotFoundError:  # pragma: no cover
        return "0+unknown"


def _hardware_for(opts: BuildOptions, backend_name: str) -> str | None:
    """The hardware kind candidates of ``backend_name`` must be measured on (``opts.hardware``), or None."""
    kinds = opts.hardware or {}
    return kinds.get(backend_name, kinds.get("*"))


def _cache_root(opts: BuildOptions) -> Path:
    from prumux_compile.cache import cache_root

    return cache_root(opts.cache_dir)


def _file_hash(path: Path | None) -> str | None:
    if path is None:
        return None
    h = hashlib.sha256(Path(path).read_bytes())
    return h.hexdigest()


#: Files of a tokenizer folder that change how texts become token ids (hashed into the cache key).
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model")


def _tokenizer_hashes(ckpt: Path) -> dict[str, str]:
    """sha256 of each tokenizer file the build reads for ``ckpt`` (its folder or its parent, as
    :func:`prumux_compile.bench.data.find_tokenizer_dir` finds it); empty when there is none."""
    from prumux_compile.bench.data import find_tokenizer_dir
    from prumux_compile.engines.base import file_sha256

    try:
        tok = find_tokenizer_dir(ckpt)
    except PrumuxError:
        return {}
    return {name: file_sha256(tok / name) for name in _TOKENIZER_FILES if (tok / name).is_file()}


def _cache_key(files: dict[str, str], backend: str, opts: BuildOptions, batch_sizes: list[int],
               eval_hash: str | None, tokenizer: dict[str, str] | None = None, hardware: str | None = None,
               precision: str = "fp32") -> str:
    """Hex key of a candidate's cache entry: everything its files and measurements depend on (checkpoint and
    tokenizer file hashes, backend, precision, options, calibration and evaluation files, tool version, cache
    layout, and the hardware kind it was measured on when the build named one)."""
    payload = {"files": files, "tokenizer": tokenizer or {}, "backend": backend, "precision": precision,
               "seq_len": opts.seq_len, "batch_sizes": batch_sizes, "calibration": _file_hash(opts.calibration_data),
               "threads": opts.threads, "rounds": opts.rounds, "warmup": opts.warmup, "eval": eval_hash,
               "eval_limit": opts.eval_limit, "agreement_samples": opts.agreement_samples,
               "tool": _tool_version(), "layout": _CACHE_LAYOUT}
    if hardware is not None:  # absent otherwise, so keys of builds without --hardware stay what they were
        payload["hardware"] = hardware
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _eval_inputs(opts: BuildOptions, ckpt: Path, label2id: dict | None, vocab: int, type_vocab: int = 2):
    """(EvalSet or None, feeds dict) for accuracy / agreement of one checkpoint."""
    from prumux_compile.bench.data import find_tokenizer_dir, load_eval_data

    if opts.eval_data is not None:
        tok = find_tokenizer_dir(ckpt)
        es = load_eval_data(opts.eval_data, tokenizer_dir=tok, seq_len=opts.seq_len, label2id=label2id,
                            limit=opts.eval_limit, read_labels=not opts.eval_unlabelled)
        return es, {"input_ids": es.input_ids, "attention_mask": es.attention_mask,
                    "token_type_ids": es.token_type_ids}
    try:
        tok = find_tokenizer_dir(ckpt)
    except PrumuxError:
        tok = None
    if tok is not None:
        from transformers import AutoTokenizer

        t = AutoTokenizer.from_pretrained(str(tok), local_files_only=True)
        enc = t(demo_texts(opts.agreement_samples), padding="max_length", max_length=opts.seq_len,
                truncation=True, return_tensors="np")
        feeds = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
        return None, feeds
    from prumux_compile.export.inputs import realistic_inputs

    return None, realistic_inputs(opts.agreement_samples, opts.seq_len, vocab, seed=1234, type_vocab_size=type_vocab)


def _predict(runner, feeds: dict[str, np.ndarray], batch: int) -> np.ndarray:
    n = feeds["input_ids"].shape[0]
    out = []
    for i in range(0, n, batch):
        chunk = {k: v[i : i + batch] for k, v in feeds.items()}
        out.append(runner.run(chunk)["logits"])
    return np.concatenate(out, axis=0)


#: Rows of the calibration inputs given to backends that calibrate (int8 static quantization).
CALIBRATION_ROWS = 64


def _calibration_inputs(opts: BuildOptions, ckpt: Path, label2id: dict | None, vocab: int,
                        type_vocab: int) -> dict[str, np.ndarray]:
    """The first :data:`CALIBRATION_ROWS` texts of ``--calibration-data`` (else of ``--eval-data``, else the demo
    sentences), tokenised as the evaluation data is (labels unused); random tokens only for a checkpoint without a
    tokenizer."""
    source = opts.calibration_data or opts.eval_data
    sub = BuildOptions(out=opts.out, seq_len=opts.seq_len, eval_data=source, eval_limit=CALIBRATION_ROWS,
                       agreement_samples=CALIBRATION_ROWS, eval_unlabelled=True)  # texts only: labels are not read
    _, feeds = _eval_inputs(sub, ckpt, label2id, vocab, type_vocab)
    return {k: np.asarray(v)[:CALIBRATION_ROWS] for k, v in feeds.items()}


def _link_export(src_dir: Path, dst_dir: Path) -> None:
    """Give ``dst_dir`` the exported ``model.onnx`` of ``src_dir`` (a hard link where the file system allows, else a
    copy) and copies of its external-data files (ONNX refuses external data with several hard links)."""
    from prumux_compile.export.onnx_export import onnx_data_files

    dst_dir.mkdir(parents=True, exist_ok=True)
    for f in onnx_data_files(src_dir / "model.onnx"):
        shutil.copy2(src_dir / Path(f).name, dst_dir / Path(f).name)
    target = dst_dir / "model.onnx"
    target.unlink(missing_ok=True)
    try:
        os.link(src_dir / "model.onnx", target)
    except OSError:
        shutil.copy2(src_dir / "model.onnx", target)


# ---------------------------------------------------------------------------------------------- one candidate
def _copy_files(src: Path, dst: Path) -> None:
    """Give ``dst`` (created) every regular file directly inside ``src``: a hard link where the file system allows
    (the build cache and OUT then share the graphs' disk space), a copy otherwise and for ONNX external-data files
    (``*.data``: ONNX refuses external data with several hard links). Nothing writes these files in place after
    they are measured, and the cache checks every artifact file's sha256 before reusing an entry."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if not f.is_file():
            continue
        target = dst / f.name
        if not f.name.endswith(".data"):
            try:
                target.unlink(missing_ok=True)
                os.link(f, target)
                continue
            except OSError:  # another file system, or links not allowed: copy
                pass
        shutil.copy2(f, target)


def _build_candidate(cid: str, ckpt: Path, backend_name: str, opts: BuildOptions, eval_hash: str | None,
                     precision: str | None = None, strict: bool = True, *, cand_dir: Path) -> dict:
    """Compile, export, build, validate, benchmark and predict one (checkpoint, backend, precision) candidate in
    this process, reusing and filling the build cache: what :class:`~prumux_compile.executors.LocalExecutor` runs.

    ``precision`` None = the backend's default. ``strict`` False (a reduced precision the user did not name): a
    candidate outside its precision's criteria, or one the backend cannot build, comes back as a rejection
    record ``{"id", "rejected": {...}}`` (its folder emptied) instead of failing the build.

    Every backend goes through the same steps (engine contract of :mod:`prumux_compile.engines.base`): the
    artifact the backend returns is the file that is validated (with the criteria it names), benchmarked
    against eager PyTorch on the artifact's own device, used for predictions, hashed into ``candidate.json``
    and, if chosen, copied into the Triton repository. The steps are the stages a cluster executor runs apart
    (:func:`_stages`): the cache lookup, :func:`_compile_candidate`, :func:`_measure_candidate`, the cache store.
    """
    from prumux_compile.executors import this_node

    prepared = _prepare_candidate(cid, ckpt, backend_name, opts, eval_hash, precision)
    info = _restore_cached(cid, ckpt, opts, prepared.key, cand_dir) if opts.cache else None
    if info is not None:
        return info
    where = this_node(device=_backend_device(backend_name))
    info = _measure_candidate(_compile_candidate(cid, ckpt, backend_name, opts, eval_hash, precision, strict,
                                                 cand_dir=cand_dir, where=where, prepared=prepared),
                              cand_dir=cand_dir, where=where)
    if opts.cache:
        problem = _store_cached(cid, ckpt, backend_name, opts, eval_hash, precision, strict, cand_dir=cand_dir,
                                key=prepared.key)
        if problem is not None:
            info = {**info, "cache_warning": problem}
    return info


#: Engine backends whose engines run on a CUDA device (a cluster executor gives their tasks a GPU).
_CUDA_BACKENDS = ("ort-cuda", "torch-cuda", "tensorrt")


def _backend_device(backend_name: str) -> str:
    """``"cuda"`` for the backends of :data:`_CUDA_BACKENDS`, else ``"cpu"``."""
    return "cuda" if backend_name in _CUDA_BACKENDS else "cpu"


@dataclass
class _Prepared:
    """A candidate's checkpoint read, its precision and its cache key (see :func:`_prepare_candidate`)."""

    raw: object
    ir: object
    batch_sizes: list[int]
    precision: str
    key: str


def _prepare_candidate(cid: str, ckpt: Path, backend_name: str, opts: BuildOptions, eval_hash: str | None,
                       precision: str | None = None, strict: bool = True) -> _Prepared:
    """Read the checkpoint, build its IR and the candidate's cache key (content hashes, backend, precision —
    None: the backend's default —, options).

    Raises:
        CheckpointError / InputError: an unreadable checkpoint, ``--seq-len`` beyond its position embeddings.
    """
    from prumux_compile.checkpoint import from_raw, read_raw
    from prumux_compile.engines import registry

    raw = read_raw(ckpt)
    ir = from_raw(raw, seq_len=opts.seq_len)
    n = ir.num_instances
    positions = int(ir.embeddings.position.shape[0])
    if not ir.is_muxed and opts.seq_len > positions:
        raise InputError(f"{ckpt}: --seq-len {opts.seq_len} exceeds the checkpoint's {positions} position embeddings")
    batch_sizes = list(opts.batch_sizes or (8 * n,))
    precision = precision or registry.get(backend_name).default_precision
    key = _cache_key(raw.files, backend_name, opts, batch_sizes, eval_hash, _tokenizer_hashes(ckpt),
                     hardware=_hardware_for(opts, backend_name), precision=precision)
    return _Prepared(raw, ir, batch_sizes, precision, key)


def _restore_cached(cid: str, ckpt: Path, opts: BuildOptions, key: str, cand_dir: Path) -> dict | None:
    """The cache entry ``key`` copied into ``cand_dir`` and its ``candidate.json`` (id and checkpoint set to this
    build's), or None when there is no reusable entry."""
    cache_dir = _cache_root(opts) / key
    if (cache_dir / "candidate.json").is_file():
        problem = _cache_entry_problem(cache_dir)
        if problem is None:
            _log(opts, f"{cid}: cached ({cache_dir})")
            _copy_files(cache_dir, cand_dir)
            info = json.loads((cand_dir / "candidate.json").read_text())
            # the cache is keyed by content: the same weights may come back under another folder name
            info.update(id=cid, checkpoint=str(Path(ckpt).absolute()), cached=True)
            return info
        _log(opts, f"{cid}: cache entry {cache_dir} not reused ({problem}); rebuilding")
    return None


def _lookup_cached(cid: str, ckpt: Path, backend_name: str, opts: BuildOptions, eval_hash: str | None,
                   precision: str | None = None, strict: bool = True, *,
                   cand_dir: Path) -> tuple[dict | None, str | None]:
    """The cache, before a candidate is dispatched (a cluster executor runs this on the driver, where the cache
    is): ``(info restored into cand_dir, key)`` on a hit, ``(None, key)`` on a miss, ``(None, None)`` without a
    cache."""
    if not opts.cache:
        return None, None
    key = _prepare_candidate(cid, ckpt, backend_name, opts, eval_hash, precision).key
    return _restore_cached(cid, ckpt, opts, key, cand_dir), key


def _store_cached(cid: str, ckpt: Path, backend_name: str, opts: BuildOptions, eval_hash: str | None,
                  precision: str | None = None, strict: bool = True, *, cand_dir: Path, key: str | None) -> None:
    """Store the finished candidate folder ``cand_dir`` as cache entry ``key`` (written in a temporary folder,
    then renamed); a cache that cannot be written only costs time: the partial folder is removed and the reason
    returned (also logged), else None. A rejected candidate (no ``candidate.json``) is not stored."""
    if not opts.cache or key is None or not (Path(cand_dir) / "candidate.json").is_file():
        return None
    cache_dir = _cache_root(opts) / key
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=_ensure(cache_dir.parent)))
        _copy_files(cand_dir, tmp)
        if cache_dir.exists():
            shutil.rmtree(cache_dir)
        tmp.rename(cache_dir)
    except OSError as exc:  # a cache that cannot be written only costs time; its partial folder is removed
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        from prumux_compile.fsutil import describe_os_error

        message = f"{cid}: not stored in the build cache ({describe_os_error(exc)}); a rerun builds it again"
        _log(opts, message)
        return message
    return None


@dataclass
class _CompiledCandidate:
    """A candidate between its compile stage (passes, export, engine build, validation) and its measure stage
    (benchmark against eager PyTorch, predictions): what a compile task hands to a measure task.

    Pickled without ``pruned`` (the pruned IR, up to the checkpoint's size); the measure stage rebuilds it from
    the checkpoint then. ``cand_dir`` is the folder the files were written to; the measure stage may get them
    in another folder (another node) and rebases ``artifact`` onto it. ``rejected`` (then ``artifact`` is None):
    a reduced-precision candidate outside its criteria, as the report's ``rejected`` lists it.
    """

    cid: str
    ckpt: Path
    opts: BuildOptions
    cand_dir: Path
    batch_sizes: list[int]
    artifact: object
    info: dict
    vocab: int
    label2id: dict
    pruned: object = None
    rejected: dict | None = None

    def __getstate__(self):
        return {**self.__dict__, "pruned": None}


#: Exports shared by the candidates of one checkpoint in one build, in this process:
#: ``{(candidates folder, checkpoint): {"dir", "export_info"}}`` (a cluster task's folder is its own, so
#: candidates on other processes export for themselves).
_SHARED_EXPORTS: dict[tuple[str, str], dict] = {}


def _compile_candidate(cid: str, ckpt: Path, backend_name: str, opts: BuildOptions, eval_hash: str | None,
                       precision: str | None = None, strict: bool = True, *, cand_dir: Path,
                       where: dict | None = None, prepared: _Prepared | None = None) -> _CompiledCandidate:
    """The compile stage of a candidate: IR passes, ``model.onnx`` (shared with an earlier candidate of the same
    checkpoint in this build and process: a hard link), the engine at ``precision``, its validation against the
    float64 reference (``validation.json``), all written into ``cand_dir``; ``where`` (the node, see
    :func:`prumux_compile.executors.this_node`) is recorded as ``compiled_on``.

    Raises:
        ValidationError (3), EngineBuildError (4), CheckpointError / InputError (2): as ``build``; with
        ``strict`` False a ValidationError or EngineBuildError of the engine comes back as ``rejected``.
    """
    from prumux_compile.engines import registry
    from prumux_compile.engines.base import Compiled, EngineConfig
    from prumux_compile.export.onnx_export import export_onnx
    from prumux_compile.export.spec import spec_for_ir
    from prumux_compile.kernels import build_module
    from prumux_compile.passes import compile_ir
    from prumux_compile.report.stats import cofi_sparsity, summary

    prepared = prepared or _prepare_candidate(cid, ckpt, backend_name, opts, eval_hash, precision)
    raw, ir, batch_sizes, precision = prepared.raw, prepared.ir, prepared.batch_sizes, prepared.precision
    n = ir.num_instances
    backend = registry.get(backend_name)

    _log(opts, f"{cid}: passes")
    pruned, _ = compile_ir(ir, "pruning")
    final, reports = compile_ir(ir, "all")
    cand_dir = Path(cand_dir)
    cand_dir.mkdir(parents=True, exist_ok=True)
    spec = spec_for_ir(final)
    share_key = (str(cand_dir.parent.resolve()), str(Path(ckpt).resolve()))
    earlier = _SHARED_EXPORTS.get(share_key)
    if earlier is not None and (earlier["dir"] / "model.onnx").is_file():
        _log(opts, f"{cid}: export (shared with {earlier['dir'].name})")
        export_info = dict(earlier["export_info"])
        _link_export(earlier["dir"], cand_dir)
    else:
        _log(opts, f"{cid}: export")
        module = build_module(final)
        export_info = export_onnx(module, spec, cand_dir / "model.onnx")
        del module
        _SHARED_EXPORTS[share_key] = {"dir": cand_dir, "export_info": export_info}
    _log(opts, f"{cid}: engine {backend_name} {precision}")
    options = {}
    vocab = int(final.embeddings.word.shape[0])
    label2id = {str(v): int(k) for k, v in final.id2label.items()}
    if "calibration" in backend.option_names and precision != "fp32":
        options["calibration"] = _calibration_inputs(opts, ckpt, label2id, vocab, spec.type_vocab_size)
    config = EngineConfig(precision=precision, batch_sizes=tuple(batch_sizes), seq_len=opts.seq_len,
                          threads=opts.threads, out_dir=cand_dir, options=options)
    try:
        artifact = backend.build(Compiled(cand_dir / "model.onnx", spec, final), config)
        _log(opts, f"{cid}: validate ({artifact.precision}, {artifact.criteria.describe()})")
        validation = _validate(backend, artifact, raw, cand_dir / "validation.json", seq_len=opts.seq_len)
    except (ValidationError, EngineBuildError) as exc:
        if strict:  # fp32 must match the reference; a named precision was asked for
            raise
        # a reduced precision outside its criteria on this checkpoint: a measured outcome, not a bug
        for key in [k for k, v in _SHARED_EXPORTS.items() if v["dir"] == cand_dir]:
            del _SHARED_EXPORTS[key]  # its export goes with it
        for f in cand_dir.iterdir():
            if f.is_file():
                f.unlink()
        _log(opts, f"{cid}: rejected: {exc}")
        rejected = {"id": cid, "checkpoint": str(Path(ckpt).absolute()), "backend": backend_name, "precision": precision,
                    "reason": str(exc), "exit_code": exc.exit_code}
        return _CompiledCandidate(cid, ckpt, opts, cand_dir, batch_sizes, None, {"id": cid}, vocab, label2id,
                                  rejected=rejected)

    info = {
        "id": cid,
        "checkpoint": str(Path(ckpt).absolute()),  # absolute: the report is read from other folders
        "checkpoint_files": raw.files,
        "family": final.family,
        "num_instances": n,
        "sparsity": cofi_sparsity(final),
        "backend": backend_name,
        "precision": artifact.precision,
        "device": artifact.device,
        "seq_len": opts.seq_len,
        "artifact": artifact.describe(),
        "export": {**export_info, "path": "model.onnx"},
        "validation": validation,
        "passes": [r.to_dict() for r in reports],
        "model": summary(ir if ir.masks is None else pruned, final),
        "compiled_on": where,
    }
    return _CompiledCandidate(cid, ckpt, opts, cand_dir, batch_sizes, artifact, info, vocab, label2id, pruned)


def _measure_candidate(compiled: _CompiledCandidate, *, cand_dir: Path, where: dict | None = None) -> dict:
    """The measure stage of a candidate: engine and eager PyTorch timed in interleaved rounds on the artifact's
    device, predictions on the evaluation inputs (``predictions.npz``), ``candidate.json``; ``where`` (the node)
    is recorded as ``measured_on``. ``cand_dir`` holds the compile stage's files (the same folder, or a copy).

    Returns:
        The candidate record (``candidate.json``).
    """
    import torch

    from prumux_compile.bench.timing import interleaved
    from prumux_compile.engines import registry
    from prumux_compile.export.inputs import realistic_inputs
    from prumux_compile.kernels import build_module

    cid, ckpt, opts, batch_sizes = compiled.cid, compiled.ckpt, compiled.opts, compiled.batch_sizes
    if compiled.rejected is not None:
        return {"id": cid, "rejected": compiled.rejected}
    artifact = compiled.artifact
    if Path(cand_dir) != Path(compiled.cand_dir):
        artifact = artifact.rebased(compiled.cand_dir, cand_dir)
    pruned = compiled.pruned
    if pruned is None:  # after a hop between processes: rebuilt from the checkpoint
        from prumux_compile.checkpoint import from_raw, read_raw
        from prumux_compile.passes import compile_ir

        pruned, _ = compile_ir(from_raw(read_raw(ckpt), seq_len=opts.seq_len), "pruning")
    backend = registry.get(artifact.backend)
    spec = artifact.spec
    n = compiled.info["num_instances"]

    _log(opts, f"{cid}: benchmark on {artifact.device}")
    device = torch.device(artifact.device)
    eager = build_module(pruned).to(device)
    torch.set_num_threads(opts.threads)
    timings = []
    vocab = compiled.vocab
    with backend.load(artifact) as runner:
        for b in batch_sizes:
            feeds = realistic_inputs(b, opts.seq_len, vocab, seed=b, type_vocab_size=spec.type_vocab_size)
            tensors = [torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask", "token_type_ids")]

            def eager_fn(t=tensors):  # host arrays in, host logits out: what the engine runner does too
                with torch.no_grad():
                    return eager(*(x.to(device) for x in t)).cpu()

            def engine_fn(f=feeds):
                return runner.run(f)

            t = interleaved({"eager": eager_fn, "engine": engine_fn}, batch_size=b, seq_len=opts.seq_len,
                            warmup=opts.warmup, rounds=opts.rounds)
            timings.append({"batch_size": b, "device": artifact.device, "engine": t["engine"].as_dict(),
                            "eager": t["eager"].as_dict(),
                            "speedup_vs_eager": t["engine"].throughput / t["eager"].throughput})
        _log(opts, f"{cid}: predictions")
        es, feeds = _eval_inputs(opts, ckpt, compiled.label2id, vocab, spec.type_vocab_size)
        # rows g·N … g·N+N−1 of each engine call share a mux group: evaluate in calls of a multiple of N (the
        # largest not above the benchmark batch), as `predict` and a client batching in multiples of N do
        logits = _predict(runner, feeds, max(n, batch_sizes[-1] - batch_sizes[-1] % n))
    del eager
    labels = es.labels if es is not None and es.labels is not None else np.zeros(0, dtype=np.int64)
    np.savez(cand_dir / "predictions.npz", logits=logits, labels=labels)

    primary = timings[-1]
    info = {
        **compiled.info,
        "benchmark": timings,
        "batch_size": primary["batch_size"],
        "throughput": primary["engine"]["throughput"],
        "latency_p50_ms": primary["engine"]["p50_ms"],
        "latency_p90_ms": primary["engine"]["p90_ms"],
        "latency_p99_ms": primary["engine"]["p99_ms"],
        "eager_throughput": primary["eager"]["throughput"],
        "speedup_vs_eager": primary["speedup_vs_eager"],
        "cached": False,
        "measured_on": where,
    }
    (cand_dir / "candidate.json").write_text(json.dumps(_json_safe(info), indent=2))
    return info


def _cache_entry_problem(entry: Path) -> str | None:
    """Why a cache entry must not be reused (its record unreadable, or a file of its artifact — the graph and its
    external-data files — missing or no longer the file that was validated and measured: another sha256 than
    ``candidate.json`` records), or None."""
    from prumux_compile.engines.base import artifact_files_problem

    try:
        info = json.loads((entry / "candidate.json").read_text())
        art = info["artifact"]
        art["path"]
    except (OSError, ValueError, KeyError, TypeError):
        return "candidate.json unreadable"
    return artifact_files_problem(entry, art)


def _validate(backend, artifact, raw, out_path: Path, seq_len: int | None = None) -> dict:
    """Validate the artifact's runnable files (the deployed one included) against the float64 reference with
    the artifact's own criteria (:mod:`prumux_compile.validation`; the cases include ``seq_len``, the length the
    candidate is benchmarked at); write ``validation.json``.

    Raises:
        ValidationError: any case outside the criteria, NaN/Inf, nondeterministic, inputs modified, or argmax
            agreement below the criteria's minimum (exit 3).
    """
    from prumux_compile.validation import require_passed, validate, validation_document

    runners = {}
    try:
        for role in artifact.runnable:
            runners[Path(artifact.files[role]).name] = backend.load(artifact.using(role))
        results = validate(runners, raw, artifact.spec, artifact.criteria, seq_len=seq_len)
    finally:
        for r in runners.values():
            r.close()
    doc = validation_document(results, artifact.spec, backend=artifact.backend, precision=artifact.precision,
                              bench_seq_len=seq_len)
    out_path.write_text(json.dumps(_json_safe(doc), indent=2))
    require_passed(results)
    deployed = results[Path(artifact.path).name]
    worst = max((c.max_abs_diff for r in results.values() for c in r.cases), default=float("nan"))
    return {"passed": doc["passed"], "max_abs_diff": worst, "cases": sum(len(r.cases) for r in results.values()),
            "criteria": artifact.criteria.to_dict(), "tolerance": artifact.criteria.atol,
            "argmax_agreement": deployed.argmax_agreement, "files": list(results), "file": out_path.name}


def _ensure(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _json_safe(obj):
    from prumux_compile.report.builder import _clean

    return _clean(obj)


# ---------------------------------------------------------------------------------------------- accuracy
def _accuracies(infos: list[dict], out_dir: Path, opts: BuildOptions, baseline_id: str | None) -> str:
    """Fill ``accuracy`` / ``accuracy_source`` / ``metric`` of every candidate (plus ``f1`` for binary classifiers,
    ``spearman`` for regression heads, ``label_warning`` when accuracy is far below chance); returns the kind of
    number ``accuracy`` is (report ``accuracy_kind``; before the first " (" it labels the plot's axis).

    The task follows the head: one output (HF ``num_labels == 1``) is a regression measured by Pearson's r (and
    Spearman's rho) against float labels, and its teacher agreement is the correlation of the outputs — never an
    argmax; otherwise a classifier measured by accuracy of the argmax (field fault F24 in docs/field-faults.md).

    Raises:
        InputError: candidates with different output widths (build checkpoints of one task together).
    """
    from prumux_compile.bench.metrics import accuracy, agreement, f1_binary, label_order_warning, pearson, spearman

    outputs: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    for info in infos:
        data = np.load(out_dir / "candidates" / info["id"] / "predictions.npz")
        outputs[info["id"]] = np.asarray(data["logits"])
        labels[info["id"]] = np.asarray(data["labels"])
    widths = sorted({int(o.shape[1]) for o in outputs.values()})
    if len(widths) > 1:
        listing = ", ".join(f"{i['id']}: {outputs[i['id']].shape[1]}" for i in infos)
        raise InputError(f"the candidates' heads have different numbers of outputs ({listing}); build checkpoints "
                         "of one task together")
    regression = widths == [1]
    metric = "pearson" if regression else "accuracy"
    table = read_accuracy_table(opts.accuracy_table) if opts.accuracy_table else {}
    have_labels = not opts.eval_unlabelled and all(
        labels[i["id"]].size == len(outputs[i["id"]]) and labels[i["id"]].size > 0 for i in infos)
    preds = {k: (o[:, 0] if regression else o.argmax(axis=1)) for k, o in outputs.items()}
    teacher = preds.get(baseline_id) if baseline_id else None
    for info in infos:
        cid = info["id"]
        info["metric"] = metric
        info["num_outputs"] = widths[0]
        recorded = _recorded(table, info["id"], Path(info["checkpoint"]))
        if have_labels and regression:
            info["accuracy"] = pearson(preds[cid], labels[cid])
            info["spearman"] = spearman(preds[cid], labels[cid])
            info["accuracy_source"] = "measured"
        elif have_labels:
            info["accuracy"] = accuracy(preds[cid], labels[cid])
            info["accuracy_source"] = "measured"
            if widths[0] == 2:
                info["f1"] = f1_binary(preds[cid], labels[cid])
            warning = label_order_warning(preds[cid], labels[cid], widths[0],
                                          source=f"the labels of {opts.eval_data}")
            if warning:
                info["label_warning"] = warning
        elif recorded is not None:
            info["accuracy"] = recorded
            info["accuracy_source"] = "recorded"
        elif teacher is not None:
            info["accuracy"] = pearson(preds[cid], teacher) if regression else agreement(preds[cid], teacher)
            info["accuracy_source"] = "teacher-agreement"
        else:
            info["accuracy"] = None
            info["accuracy_source"] = "unknown"
        if info["accuracy"] is not None and not np.isfinite(info["accuracy"]):  # a constant output: r undefined
            info["accuracy"] = None
            info["metric_note"] = (f"{cid}: its output is constant over the {len(preds[cid])} examples (or the "
                                   "reference's is), so Pearson's r is undefined; the candidate is not selectable")
    _precision_agreement(infos, preds, regression)
    if regression:
        if have_labels:
            return "Pearson r (measured through the engine; Spearman rho in each candidate's 'spearman')"
        if table:
            return "Pearson r (recorded)"
        return ("teacher agreement as Pearson r (no labelled data: correlation of each candidate's output with "
                "the baseline candidate's)")
    if have_labels:
        return "accuracy (measured through the engine)"
    if table:
        return "accuracy (recorded)"
    return "teacher agreement (no labelled data: agreement of argmax with the baseline candidate)"


def _precision_agreement(infos: list[dict], preds: dict[str, np.ndarray], regression: bool) -> None:
    """For every candidate whose checkpoint also has an fp32 candidate (the first built): ``fp32_id``,
    ``agreement_with_fp32`` (fraction of evaluation rows with the same argmax — Pearson r of the outputs for a
    regression head) and ``accuracy_delta_vs_fp32`` (its metric minus the fp32 candidate's)."""
    from prumux_compile.bench.metrics import agreement, pearson

    fp32 = {}
    for info in infos:
        if info.get("precision", "fp32") == "fp32":
            fp32.setdefault(info["checkpoint"], info)
    for info in infos:
        ref = fp32.get(info["checkpoint"])
        if ref is None or ref is info:
            continue
        a, b = preds[info["id"]], preds[ref["id"]]
        info["fp32_id"] = ref["id"]
        info["agreement_with_fp32"] = pearson(a, b) if regression else agreement(a, b)
        if info.get("accuracy") is not None and ref.get("accuracy") is not None:
            info["accuracy_delta_vs_fp32"] = info["accuracy"] - ref["accuracy"]


def _accuracy_notes(infos: list[dict], opts: BuildOptions, kind: str) -> list[str]:
    """Warnings about the accuracies of :func:`_accuracies`: labels far below chance (one line naming the likely
    label-order / id2label mismatch, field fault F23 in docs/field-faults.md), undefined correlations, an unlabelled evaluation file."""
    notes = []
    flagged = [i for i in infos if i.get("label_warning")]
    if flagged:
        first = flagged[0]
        others = [i["id"] for i in flagged[1:]]
        notes.append(f"{first['id']}: {first['label_warning']}"
                     + (f" (also below chance: {', '.join(others)})" if others else ""))
    notes.extend(i["metric_note"] for i in infos if i.get("metric_note"))
    if opts.eval_data is not None and opts.eval_unlabelled:
        notes.append(f"--eval-unlabelled: {opts.eval_data} is used for its texts only; the numbers are "
                     f"{kind.split(' (')[0]}, not measured accuracy")
    return notes


#: config.json ``problem_type`` values (HF) this compiler measures; see :func:`_task_of`.
_PROBLEM_TYPES = {"single_label_classification": "classification", "regression": "regression"}


def _task_of(ckpts: list[tuple[str, Path]]) -> str:
    """``"classification"`` or ``"regression"``: the task the checkpoints' heads solve, from their config.json
    (``problem_type``, and the number of outputs = entries of ``id2label`` or ``num_labels``). One output is a
    regression (HF's rule for ``num_labels == 1``). The weights decide again after compiling (:func:`_accuracies`).

    Raises:
        InputError: a ``problem_type`` this compiler cannot measure (multi-label classification: a sigmoid per
            label, not an argmax), a regression with several outputs, a problem_type contradicting the number of
            outputs, or checkpoints of different tasks.
    """
    tasks: dict[str, list[str]] = {}
    for cid, path in ckpts:
        cfg_path = Path(path) / "config.json"
        try:
            cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        except (OSError, ValueError):
            cfg = {}  # the checkpoint reader names the problem when the candidate is built
        if not isinstance(cfg, dict):
            cfg = {}
        outputs = len(cfg["id2label"]) if isinstance(cfg.get("id2label"), dict) and cfg["id2label"] else None
        if outputs is None and isinstance(cfg.get("num_labels"), int):
            outputs = cfg["num_labels"]
        problem = cfg.get("problem_type")
        if problem is not None and problem not in _PROBLEM_TYPES:
            raise InputError(f"{cfg_path}: problem_type {problem!r} is not supported (supported: "
                             f"{', '.join(_PROBLEM_TYPES)}); a multi-label head needs a sigmoid per label, which "
                             "accuracy by argmax would score wrongly")
        task = "regression" if outputs == 1 else "classification"
        if problem is not None and outputs is not None and _PROBLEM_TYPES[problem] != task:
            raise InputError(f"{cfg_path}: problem_type {problem!r} contradicts the head's {outputs} output(s) "
                             "(one output is a regression, several a classification)")
        if problem == "regression":
            task = "regression"
        tasks.setdefault(task, []).append(cid)
    if len(tasks) > 1:
        listing = "; ".join(f"{t}: {', '.join(ids)}" for t, ids in sorted(tasks.items()))
        raise InputError(f"the checkpoints solve different tasks ({listing}); build checkpoints of one task together")
    return next(iter(tasks))


def _check_eval_data(opts: BuildOptions, ckpt: Path, task: str,
                     ckpts: list[tuple[str, Path]] | None = None) -> None:
    """Read the first rows of ``--eval-data`` the way the build will, before anything is built.

    Raises:
        InputError: anything :func:`prumux_compile.bench.data.load_eval_data` refuses; segment ids (the second
            sentence of a pair) outside the token-type table of an N = 1 checkpoint of ``ckpts`` (multiplexed models
            ignore token types); and, unless ``opts.eval_unlabelled``, a file without a recognised label column (the
            message names the columns found and the accepted ones) or whose label column is empty in the first rows.
    """
    from prumux_compile.bench.data import LABEL_COLUMNS, find_tokenizer_dir, load_eval_data

    cfg = json.loads((ckpt / "config.json").read_text()) if (ckpt / "config.json").is_file() else {}
    label2id = {str(v): int(k) for k, v in (cfg.get("id2label") or {}).items()} or None
    es = load_eval_data(opts.eval_data, tokenizer_dir=find_tokenizer_dir(ckpt), seq_len=opts.seq_len,
                        label2id=label2id, limit=8, task=task,
                        read_labels=not opts.eval_unlabelled)
    if int(es.token_type_ids.max()) >= 1:
        _check_segment_ids(opts, es, ckpts or [(ckpt.name, ckpt)])
    if opts.eval_unlabelled:
        return
    unlabelled = "--eval-unlabelled to use its texts only (teacher agreement instead of measured accuracy)"
    if es.label_column is None:
        raise InputError(f"eval data {opts.eval_data}: no label column; columns found: {', '.join(es.columns)}; "
                         f"accepted label columns: {', '.join(LABEL_COLUMNS)}. Rename the label column, or pass "
                         f"{unlabelled}")
    if es.labels is None:
        raise InputError(f"eval data {opts.eval_data}: column {es.label_column!r} holds no labels in its first rows "
                         f"(empty, null or -1: a test split?); give labelled data, or pass {unlabelled}")


def _check_segment_ids(opts: BuildOptions, es, ckpts: list[tuple[str, Path]]) -> None:
    """Refuse an evaluation file whose segment ids (a sentence pair's second segment is 1) lie outside the token-type
    table of an N = 1 checkpoint (field fault F20 in docs/field-faults.md): the engine would refuse them only after the candidate was built
    and benchmarked. Multiplexed models ignore token types (docs/checkpoint-formats.md Q3); their config says N.

    Raises:
        InputError: naming the file, its pair columns, the checkpoint and its table's rows.
    """
    from prumux_compile.checkpoint import read_raw

    need = int(es.token_type_ids.max()) + 1
    for cid, path in ckpts:
        cfg_path = Path(path) / "config.json"
        try:
            cfg = json.loads(cfg_path.read_text())
        except (OSError, ValueError):
            continue  # the checkpoint reader names the problem when the candidate is built
        n = cfg.get("num_instances") if isinstance(cfg, dict) else None
        if isinstance(n, int) and not isinstance(n, bool) and n > 1:
            continue
        raw = read_raw(path)
        table = raw.state_dict.get("bert.embeddings.token_type_embeddings.weight")
        if raw.is_muxed or table is None or int(table.shape[0]) >= need:
            continue
        pair = (f"its sentence pairs (columns {es.text_columns[0]!r} + {es.text_columns[1]!r})"
                if len(es.text_columns) == 2 else "its tokenized texts")
        raise InputError(f"eval data {opts.eval_data}: {pair} give segment ids up to {need - 1} (the tokenizer's "
                         f"second segment), but checkpoint {cid} has a token-type table of {int(table.shape[0])} "
                         f"row(s) (type_vocab_size), so it takes segment ids in [0, {int(table.shape[0])}) only; give "
                         "an evaluation file of single sentences (one text column), or a checkpoint trained on pairs")


def _baseline_id(infos: list[dict]) -> str:
    """The unpruned, unmultiplexed reference candidate: lowest N, then lowest sparsity, then fp32 before other
    precisions, then the first built (the first backend)."""
    order = {i["id"]: k for k, i in enumerate(infos)}
    return min(infos, key=lambda i: (i["num_instances"], i["sparsity"], i.get("precision", "fp32") != "fp32",
                                     order[i["id"]]))["id"]


# ---------------------------------------------------------------------------------------------- the plan
def candidate_plan(backends: list[str], precisions: tuple[str, ...] | None,
                   every_backend: bool = False) -> tuple[list[tuple[str, str]], bool]:
    """The (backend, precision) pairs built for every checkpoint, and whether the precisions were named.

    Args:
        backends: available backends, in the user's order.
        precisions: None (``auto``: every precision a backend builds here), ``("all",)`` (every pair a backend
            builds here) or named precisions.
        every_backend: the user named the backends: each of them builds each wanted precision it builds here.
            Otherwise (the default backend list) each wanted precision is built once, by the first backend that
            builds it (``all`` still builds every pair).

    Raises:
        InputError: an unknown precision, or a named one that no requested backend builds here (the message says
            which backend builds what).
    """
    from prumux_compile.engines import registry
    from prumux_compile.engines.base import PRECISIONS

    supported = {b: registry.get(b).supported_precisions() for b in backends}
    named = precisions is not None and tuple(precisions) not in (("auto",), ("all",))
    if named:
        unknown = [p for p in precisions if p not in PRECISIONS]
        if unknown:
            raise InputError(f"--precision {','.join(unknown)}: expected a comma-separated list of "
                             f"{', '.join(PRECISIONS)}, or 'auto' / 'all'")
    wanted = list(precisions) if named else [p for p in PRECISIONS if any(p in supported[b] for b in backends)]
    pairs = [(b, p) for b in backends for p in supported[b] if p in wanted]
    if not (every_backend or (precisions is not None and tuple(precisions) == ("all",))):
        seen: set[str] = set()
        pairs = [x for x in pairs if not (x[1] in seen or seen.add(x[1]))]
    missing = [p for p in wanted if not any(q == p for _, q in pairs)]
    if missing:
        what = "; ".join(f"{b} builds {', '.join(supported[b]) or 'nothing'}" for b in backends)
        raise InputError(f"--precision {', '.join(missing)}: no requested backend builds it here ({what}); "
                         "OpenVINO (--backend openvino, the [openvino] extra) builds bf16 on CPUs with native bf16")
    return _precision_order(pairs), named


def _precision_order(plan: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """fp32 first (the baseline), then the others in the order given."""
    return [x for x in plan if x[1] == "fp32"] + [x for x in plan if x[1] != "fp32"]


def candidate_id(cid: str, backend: str, precision: str, multi_backend: bool, multi_precision: bool) -> str:
    """``cid`` plus what tells the candidates of one checkpoint apart: ``n2_s0.50``, ``n2_s0.50@int8``,
    ``n2_s0.50@openvino``, ``n2_s0.50@openvino.bf16``."""
    tag = ".".join(([backend] if multi_backend else []) + ([precision] if multi_precision else []))
    return f"{cid}@{tag}" if tag else cid


def _stages():
    """The driver's candidate stages, for an executor (:class:`prumux_compile.executors.Stages`)."""
    from prumux_compile.executors import Stages

    return Stages(run=_build_candidate, lookup=_lookup_cached, compile=_compile_candidate,
                  measure=_measure_candidate, store=_store_cached)


def _lost_candidates(outcomes: list, opts: BuildOptions) -> list[str]:
    """Warnings for candidates an executor lost to worker faults (each after its retry).

    Raises:
        CandidatesLostError (exit 7): every candidate was lost, or any was and ``opts.require_all``.
    """
    from prumux_compile.errors import CandidatesLostError

    lost = [o for o in outcomes if o.info is None]
    if not lost:
        return []
    listing = "; ".join(f"{o.id}: {o.error}" for o in lost)
    if opts.require_all or len(lost) == len(outcomes):
        rerun = " The finished ones are in the build cache: a rerun builds only the lost ones." if opts.cache else ""
        raise CandidatesLostError(f"{len(lost)} of {len(outcomes)} candidates lost to worker faults "
                                  f"({'--require-all' if len(lost) < len(outcomes) else 'none left'}): {listing}."
                                  + rerun)
    return [f"{len(lost)} of {len(outcomes)} candidates lost to worker faults and left out of the selection "
            f"(report executor.failed): {listing}"]


def _executor_section(executor, outcomes: list) -> dict:
    """The report's ``executor``: how and where candidates ran, retried and lost candidates (docs/report.md)."""
    return {**executor.describe(),
            "retried": [{"id": o.id, "attempts": o.attempts} for o in outcomes if o.info is not None and o.attempts],
            "failed": [{"id": o.id, "reason": o.error, "attempts": o.attempts} for o in outcomes if o.info is None]}


# ---------------------------------------------------------------------------------------------- the job
def build(checkpoints: list[str | Path], opts: BuildOptions) -> dict:
    """Run the whole job and write ``opts.out`` atomically.

    Returns:
        The report (also written to ``OUT/report.json``).

    Raises:
        InputError (exit 2): no checkpoints, OUT exists (without ``force``) or is a file, a budget outside
            [0, 1], bad eval data (or none of its columns is a label column, without ``eval_unlabelled``), heads of
            an unsupported or mixed task, a location that cannot be written (OUT, ``triton_repo``, the cache).
        CheckpointError (2), ValidationError (3), EngineBuildError (4), NoCandidateError (5),
        TritonConfigError (6), CandidatesLostError (7: a cluster executor lost every candidate, or any with
        ``require_all``). On any error nothing is left at ``opts.out`` (a previous OUT stays untouched).
    """
    from prumux_compile.bench.timing import environment
    from prumux_compile.engines import registry
    from prumux_compile.executors import CandidateTask, make_executor
    from prumux_compile.report.builder import write_report
    from prumux_compile.report.plot import pareto_plot
    from prumux_compile.select import Candidate, pareto_front, predict_with_precision, raise_if_none, select

    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is a file; give a folder path for the outputs")
    if out.parent.exists() and not out.parent.is_dir():
        raise InputError(f"{out}: its parent {out.parent} is a file; give a folder path for the outputs")
    if out.exists() and not opts.force:
        raise InputError(f"{out}: already exists; choose another folder or pass --force to replace it")
    # file-system problems are found now, not after minutes of compiling (field fault F27 in docs/field-faults.md)
    require_writable_dir(out.parent, what=f"output folder {out}", hint="give -o a folder on a writable disk")
    if opts.triton_repo is not None:
        require_writable_dir(opts.triton_repo, what=f"--triton-repo {opts.triton_repo}")
    if opts.cache:
        require_writable_dir(_cache_root(opts), what=f"build cache {_cache_root(opts)}",
                             hint="pass --cache-dir DIR (a writable folder) or --no-cache")
    if (opts.max_accuracy_drop is None) == (opts.min_accuracy is None):
        if opts.max_accuracy_drop is None:
            opts.max_accuracy_drop = 0.01
        else:
            raise InputError("give either --max-accuracy-drop or --min-accuracy, not both")
    for flag, value in (("--max-accuracy-drop", opts.max_accuracy_drop), ("--min-accuracy", opts.min_accuracy)):
        if value is not None and not (isinstance(value, (int, float)) and 0.0 <= float(value) <= 1.0):
            raise InputError(f"{flag} {value!r} is outside [0, 1] (a fraction in the task's metric: 0.01 is one "
                             "accuracy point)")
    if opts.eval_data is not None and not Path(opts.eval_data).is_file():
        raise InputError(f"{opts.eval_data}: evaluation file not found")
    for flag, value, low in (("--seq-len", opts.seq_len, 2), ("--threads", opts.threads, 1),
                             ("--rounds", opts.rounds, 1), ("--warmup", opts.warmup, 0),
                             ("--eval-limit", opts.eval_limit, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise InputError(f"{flag} {value!r}: must be an integer >= {low}")
    table = read_accuracy_table(Path(opts.accuracy_table)) if opts.accuracy_table is not None else None  # fail fast
    ckpts = discover_checkpoints(checkpoints)
    # replacing OUT must never delete what the build reads (a grid folder given as -o with --force, a link, '..')
    refuse_inputs_inside(out, {**{f"checkpoint {cid}": p for cid, p in ckpts}, "--eval-data": opts.eval_data,
                               "--accuracy-table": opts.accuracy_table,
                               "build cache": _cache_root(opts) if opts.cache else None})
    if table is not None and (opts.eval_data is None or opts.eval_unlabelled):
        missing = [cid for cid, p in ckpts if _recorded(table, cid, p) is None]
        if missing:
            raise InputError(f"{opts.accuracy_table}: no accuracy recorded for {', '.join(missing)} (rows are matched "
                             f"to a checkpoint's id, path or folder name, exactly); the table has: "
                             f"{', '.join(sorted(table)) or 'no rows'}. Add the missing rows, or give --eval-data: "
                             "recorded accuracies cannot be compared with another kind of number")
    task = _task_of(ckpts)
    if opts.eval_data is not None:  # fail fast on a bad evaluation file, before anything is built
        _check_eval_data(opts, ckpts[0][1], task, ckpts)

    executor = make_executor(opts.executor, artifact_store=opts.artifact_store)
    if opts.hardware and not executor.remote:
        raise InputError("--hardware selects cluster nodes; it needs --executor ray")
    if opts.artifact_store is not None:
        require_writable_dir(opts.artifact_store, what=f"--artifact-store {opts.artifact_store}")
    avail = registry.availability()
    backends = []
    notes = []
    for name in opts.backends:
        if name not in avail:
            raise InputError(f"unknown backend {name!r}; known: {', '.join(registry.names())}")
        ok, why = avail[name]
        if ok or executor.remote:  # on a cluster, the node that builds it decides (exit 4 there)
            backends.append(name)
        elif opts.backends_explicit:
            raise EngineBuildError(f"backend {name} was requested but is unavailable here: {why}")
        else:
            notes.append(f"backend {name} skipped: {why}")
    if not backends:
        raise EngineBuildError("no requested backend is available here: " + "; ".join(notes))
    plan, named = candidate_plan(backends, opts.precisions, every_backend=opts.backends_explicit)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_tempdir(f".{out.name}.tmp-", out.parent)
    try:
        eval_hash = _file_hash(opts.eval_data)
        tasks = []
        multi_backend = len({b for b, _ in plan}) > 1
        multi_precision = len({p for _, p in plan}) > 1
        for cid, path in ckpts:
            for b, prec in plan:
                full_id = candidate_id(cid, b, prec, multi_backend, multi_precision)
                # fp32 must match the reference and a named precision was asked for: their failures fail the
                # build; another reduced precision outside its criteria is a measured outcome (report rejected)
                strict = prec == "fp32" or named
                tasks.append(CandidateTask(full_id, (full_id, path, b, opts, eval_hash, prec, strict),
                                           tmp / "candidates" / full_id, device=_backend_device(b),
                                           threads=opts.threads, hardware=_hardware_for(opts, b)))
        outcomes = executor.run(tasks, _stages(), log=lambda m: _log(opts, m),
                                notify=lambda done, total, cid, info: _candidate_event(opts, done, total, cid, info))
        infos, rejected = [], []
        for o in outcomes:
            if o.info is not None and "rejected" in o.info:
                rejected.append(o.info["rejected"])
                notes.append(f"{o.id}: rejected ({o.info['rejected']['precision']} outside its criteria or not "
                             f"buildable): {o.info['rejected']['reason']}")
                shutil.rmtree(tmp / "candidates" / o.id, ignore_errors=True)
            elif o.info is not None:
                if "cache_warning" in o.info:
                    notes.append(o.info.pop("cache_warning"))
                infos.append(o.info)
        notes.extend(_lost_candidates(outcomes, opts))
        if not infos and rejected:
            raise ValidationError("no candidate passed validation: " + "; ".join(r["reason"] for r in rejected))
        _log(opts, "accuracy and selection")
        baseline = _baseline_id(infos)
        base_info = next(i for i in infos if i["id"] == baseline)
        if base_info.get("precision", "fp32") != "fp32":
            notes.append(f"baseline: no fp32 candidate of the unpruned, unmultiplexed model was built, so {baseline} "
                         f"({base_info['precision']}) is the baseline: accuracy drops and speedups are measured "
                         "against a reduced-precision model; add fp32 to --precision to measure them against fp32")
        kind = _accuracies(infos, tmp, opts, baseline)
        notes.extend(_accuracy_notes(infos, opts, kind))
        for i in infos:
            for side in ("engine", "eager"):
                lat = i["benchmark"][-1][side]["latencies_ms"]
                if len(lat) >= 2 and max(lat) > 3 * min(lat):
                    notes.append(f"{i['id']}: {side} timings unstable (slowest round {max(lat) / min(lat):.1f}x the "
                                 "fastest): the machine is busy; rerun with --no-cache for trustworthy ratios")
                    break

        cands = [Candidate(id=i["id"], num_instances=i["num_instances"], sparsity=i["sparsity"],
                           backend=i["backend"], precision=i["precision"], throughput=i["throughput"],
                           accuracy=i["accuracy"], accuracy_source=(i["accuracy_source"]
                                                                    if i["accuracy_source"] != "unknown" else "measured"),
                           latency_p50_ms=i["latency_p50_ms"], latency_p99_ms=i["latency_p99_ms"],
                           metric=i.get("metric", "accuracy"))
                 for i in infos]
        selection = select(cands, max_accuracy_drop=opts.max_accuracy_drop, min_accuracy=opts.min_accuracy,
                           baseline_id=baseline)
        if selection.clamped_from is not None:  # field fault F23 in docs/field-faults.md: a drop larger than the baseline's value
            notes.append(f"budget: the baseline's {kind.split(' (')[0]} {selection.baseline.accuracy:.4f} minus "
                         f"--max-accuracy-drop {opts.max_accuracy_drop:g} is {selection.clamped_from:.4f}, below the "
                         f"lowest possible value; clamped to {selection.threshold:g}, so the budget does not "
                         "constrain the choice")
        front = {c.id for c in pareto_front(cands)}
        for i in infos:
            i["pareto"] = i["id"] in front
        # every backend and precision: precision (backend/precision with several backends) is the third axis
        primary = [c for c in cands if c.accuracy is not None]
        prediction = None
        if len({(c.num_instances, round(c.sparsity, 6)) for c in primary}) >= 2:
            # Predict near the measured configurations only: N up to twice the largest measured N, sparsity up
            # to 0.15 above the largest measured one (a few points fitted by least squares extrapolate wildly).
            n_max = max(c.num_instances for c in primary)
            s_max = min(0.95, max(c.sparsity for c in primary) + 0.15)
            base = next(c for c in cands if c.id == baseline)
            several = len({c.backend for c in primary}) > 1
            # accuracy of a classifier that learned nothing (1/C): the floor the accuracy family may use
            outputs = sorted({int(i.get("num_outputs") or 0) for i in infos})
            chance = (1.0 / outputs[0] if len(outputs) == 1 and outputs[0] >= 2
                      and all(i.get("metric", "accuracy") == "accuracy" for i in infos) else None)
            prediction = predict_with_precision(
                primary, threshold=selection.threshold, chance=chance,
                reference=f"{base.backend}/{base.precision}" if several else base.precision,
                nums=tuple(n for n in (1, 2, 3, 4, 5, 6, 8, 10) if n <= 2 * n_max),
                sparsities=np.linspace(0.0, s_max, 16)).to_dict()
        report = {
            "tool": {"name": "prumux-compile", "version": _tool_version()},
            "environment": environment(threads=opts.threads),
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()
                        if k not in ("out", "cache_dir") and not callable(v)} | {"executor": executor.spec},
            "inputs": [{"id": cid, "path": str(Path(p).absolute())} for cid, p in ckpts],
            "backends": {name: {"available": ok, "detail": why} for name, (ok, why) in avail.items()},
            "accuracy_kind": kind,
            "task": "regression" if infos[0].get("metric") == "pearson" else "classification",
            "metric": infos[0].get("metric", "accuracy"),
            "candidates": infos,
            "selection": {**selection.to_dict(), "chosen": selection.chosen.id if selection.chosen else None,
                          "baseline": baseline,
                          "baseline_accuracy": next(i["accuracy"] for i in infos if i["id"] == baseline)},
            "prediction": prediction,
            "rejected": rejected,
            "executor": _executor_section(executor, outcomes),
            "warnings": notes,
        }
        if selection.chosen is None:
            raise_if_none(selection)
        chosen = next(i for i in infos if i["id"] == selection.chosen.id)
        pareto_plot(infos, chosen["id"], tmp / "pareto.png", accuracy_label=kind.split(" (")[0],
                    threshold=selection.threshold)
        _log(opts, "writing outputs (pareto.png, model_repository, report.json)")
        refusal = variant_refusal(chosen, opts.triton_backend)
        if refusal is not None:  # measured and selected: the build stands, only this variant cannot serve it
            repo = None
            notes.append(f"{chosen['id']}: no model repository written (--triton-backend python serves ONNX "
                         f"artifacts only: {refusal}); `prumux-compile triton OUT/report.json -o REPO` writes its "
                         "native variant")
        else:
            repo = write_candidate_repository(tmp / "model_repository", chosen, tmp / "candidates" / chosen["id"],
                                              backend=opts.triton_backend)
        if repo is None and refusal is None:
            why = ((chosen.get("artifact") or {}).get("deployment") or {}).get("note")
            notes.append(f"{chosen['id']}: backend {chosen['backend']} has no Triton platform"
                         + (f" ({why})" if why else "") + "; no model repository written")
        if repo is not None and opts.triton_ensemble:  # text in, labels out (README "Serving text")
            from prumux_compile.sources import write_candidate_ensemble

            if write_candidate_ensemble(repo.parent, chosen, tmp / "candidates" / chosen["id"], repo.name) is None:
                notes.append(f"{chosen['id']}: no tokenizer in its checkpoint folder; no text ensemble written")
        report["model_repository"] = str(repo.relative_to(tmp)) if repo is not None else None
        write_report(report, tmp / "report.json")
        _commit(tmp, out)
        if opts.triton_repo is not None and repo is not None:
            write_candidate_repository(opts.triton_repo, chosen, out / "candidates" / chosen["id"],
                                       backend=opts.triton_backend, overwrite=True)
        report["out"] = str(out)
        return report
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:  # this build's shared exports are done with (the folder is renamed or removed)
        done = str((tmp / "candidates").resolve())
        for key in [k for k in _SHARED_EXPORTS if k[0] == done]:
            del _SHARED_EXPORTS[key]


def _model_name(info: dict) -> str:
    return "prumux_" + "".join(ch if ch.isalnum() else "_" for ch in info["id"]).strip("_")


def variant_refusal(info: dict, backend: str) -> str | None:
    """Why the Triton ``backend`` variant cannot serve candidate ``info`` (the Python-backend variant runs ONNX
    artifacts only), or None."""
    platform = ((info.get("artifact") or {}).get("deployment") or {}).get("platform")
    if backend == "python" and platform not in (None, "onnxruntime_onnx"):
        return (f"the Python-backend variant serves ONNX artifacts only; {info['id']} is an {platform} artifact: "
                "use the native backend")
    return None


def write_candidate_repository(repo_dir: Path, info: dict, cand_dir: Path, *, name: str | None = None,
                               backend: str = "onnxruntime", overwrite: bool = False, **overrides) -> Path | None:
    """Write the Triton model repository entry that serves candidate ``info`` exactly as it was measured.

    The deployed file is the candidate's artifact (``info["artifact"]["path"]``, the file validated and
    benchmarked; its sha256 is ``info["artifact"]["sha256"]``), with the platform, instance kind and session
    settings of its :class:`~prumux_compile.engines.base.Deployment`.

    Args:
        repo_dir: the model repository.
        info: a candidate of ``report.json`` / ``candidate.json``.
        cand_dir: the candidate's folder (holding the artifact file).
        name: model name (default ``prumux_<id>``).
        backend: ``"onnxruntime"`` (the platform's native backend) or ``"python"`` (ONNX artifacts only).
        overwrite: replace an existing entry.
        **overrides: further keyword arguments of :func:`prumux_compile.triton.write_repository` (batching,
            instance count, ...).

    Returns:
        The model directory, or None when the artifact has no Triton platform.

    Raises:
        TritonConfigError / InputError: as :func:`~prumux_compile.triton.write_repository`; InputError also when
            the artifact file's sha256 is not the one ``info`` records (the file changed after it was measured).
    """
    from prumux_compile.engines.base import Deployment
    from prumux_compile.triton import write_repository

    art = info.get("artifact") or {}
    dep = Deployment.from_dict(art.get("deployment"))
    if dep is None or dep.platform is None:
        return None
    model_path = Path(cand_dir) / art["path"]
    if (art.get("sha256") or art.get("files_sha256")) and model_path.is_file():
        from prumux_compile.engines.base import artifact_files_problem

        problem = artifact_files_problem(cand_dir, art)  # the graph and every external-data file
        if problem is not None:
            raise InputError(f"{cand_dir}: not the artifact candidate {info['id']} was validated and measured with "
                             f"(its candidate.json): {problem}; rebuild the candidate (prumux-compile build --no-cache)")
    kwargs = dict(name=name or _model_name(info), model_path=model_path, platform=dep.platform,
                  num_instances=info["num_instances"], instance_kind=dep.instance_kind, overwrite=overwrite,
                  intra_op_num_threads=dep.intra_op_num_threads, inter_op_num_threads=dep.inter_op_num_threads,
                  graph_optimization_level=dep.graph_optimization_level, gpu_accelerators=dep.accelerators)
    if dep.platform == "onnxruntime_onnx":
        kwargs["backend"] = backend
    refusal = variant_refusal(info, backend)
    if refusal is not None:
        from prumux_compile.errors import TritonConfigError

        raise TritonConfigError(refusal)
    if dep.plan is not None:  # JSON lists -> the writer's tensor specs and (min, opt, max) shape tuples
        from prumux_compile.triton import TensorSpec

        def specs(rows):
            return [TensorSpec(name, dtype, tuple(shape)) for name, dtype, shape in rows]

        kwargs.update(plan_inputs=specs(dep.plan["inputs"]), plan_outputs=specs(dep.plan["outputs"]),
                      plan_profiles=[{k: tuple(tuple(x) for x in v) for k, v in p.items()}
                                     for p in dep.plan["profiles"]])
    if dep.platform == "openvino":  # the IR's interface is the ONNX graph it was made from
        kwargs.update(interface_onnx=Path(cand_dir) / art["files"]["plain"], backend_parameters=dict(dep.parameters),
                      graph_optimization_level=None, inter_op_num_threads=None, intra_op_num_threads=None)
    kwargs.update(overrides)
    return write_repository(repo_dir, **kwargs)


def _commit(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` into place; an existing ``out`` is replaced only after ``tmp`` is complete."""
    if out.exists():
        backup = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(backup)
        try:
            tmp.rename(out)
        except OSError:
            backup.rename(out)
            raise
        shutil.rmtree(backup, ignore_errors=True)
    else:
        tmp.rename(out)
