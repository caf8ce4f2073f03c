"""The main job: checkpoints -> candidates -> measured, validated engines -> Auto-PruMUX choice -> outputs.

:func:`build` is the library call behind ``prumux-compile build``. For every checkpoint it runs the pass
pipeline, exports ``model.onnx``, builds an engine per requested backend through the one engine contract
(:mod:`prumux_compile.engines.base`; no backend is special here), validates the artifact against the float64
reference with the criteria of its (backend, precision) (exit 3 on failure), benchmarks it side by side with the
eager-PyTorch form of the same checkpoint on the same device (the physically pruned, unfused model — what
upstream ``evaluation.py`` runs), measures accuracy through the engine, then selects with Auto-PruMUX and writes
``OUT/`` atomically; the Triton repository receives the chosen artifact file itself, with the settings it was
measured under (fields: docs/report.md).
"""
from __future__ import annotations

from prumux_compile.fsutil import output_tempdir, require_writable_dir

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
#: Bumped whenever candidate.json changes shape, so an older cache entry is never reused.
_CACHE_LAYOUT = 3


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
        force: replace an existing ``out`` (atomically).
        agreement_samples: inputs used for teacher agreement when there is no labelled data.
        eval_unlabelled: ``eval_data`` is used for its texts only (teacher agreement), labels or not.
        progress: called with a one-line stage message (``"<id>: export"``, ``"accuracy and selection"``, ...).
        on_candidate: called as ``(done, total, id, None)`` before each candidate and ``(done, total, id, info)``
            after it (``done`` counts finished candidates, ``total`` all of them).
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
    force: bool = False
    agreement_samples: int = 128
    eval_unlabelled: bool = False
    progress: Callable[[str], None] | None = field(default=None, repr=False)
    on_candidate: Callable[[int, int, str, dict | None], None] | None = field(default=None, repr=False)


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
        table[row["checkpoint"].strip()] = acc
    return table


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


def _cache_root(opts: BuildOptions) -> Path:
    from prumux_compile.cache import cache_root

    return cache_root(opts.cache_dir)


def _file_hash(path: Path | None) -> str | None:
    if path is None:
        return None
    h = hashlib.sha256(Path(path).read_bytes())
    return h.hexdigest()


def _cache_key(files: dict[str, str], backend: str, opts: BuildOptions, batch_sizes: list[int],
               eval_hash: str | None, precision: str = "fp32") -> str:
    payload = {"files": files, "backend": backend, "precision": precision, "seq_len": opts.seq_len,
               "batch_sizes": batch_sizes, "calibration": _file_hash(opts.calibration_data),
               "threads": opts.threads, "rounds": opts.rounds, "warmup": opts.warmup, "eval": eval_hash,
               "eval_limit": opts.eval_limit, "agreement_samples": opts.agreement_samples,
               "tool": _tool_version(), "layout": _CACHE_LAYOUT}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _eval_inputs(opts: BuildOptions, ckpt: Path, label2id: dict | None, vocab: int, type_vocab: int = 2):
    """(EvalSet or None, feeds dict) for accuracy / agreement of one checkpoint."""
    from prumux_compile.bench.data import find_tokenizer_dir, load_eval_data

    if opts.eval_data is not None:
        tok = find_tokenizer_dir(ckpt)
        es = load_eval_data(opts.eval_data, tokenizer_dir=tok, seq_len=opts.seq_len, label2id=label2id,
                            limit=opts.eval_limit)
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
                       agreement_samples=CALIBRATION_ROWS)
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
    """Copy every regular file directly inside ``src`` into ``dst`` (created)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file():
            shutil.copy2(f, dst / f.name)


def _build_candidate(cid: str, ckpt: Path, backend_name: str, opts: BuildOptions, cand_dir: Path,
                     eval_hash: str | None, precision: str | None = None, shared: dict | None = None) -> dict:
    """Compile, export, build, validate, benchmark and predict one (checkpoint, backend, precision) candidate.

    ``precision`` None = the backend's default. ``shared`` (one dict per build) lets the candidates of one
    checkpoint share its export: the first exports ``model.onnx``, the others link (or copy) it.

    Every backend goes through the same steps (engine contract of :mod:`prumux_compile.engines.base`): the
    artifact the backend returns is the file that is validated (with the criteria it names), benchmarked
    against eager PyTorch on the artifact's own device, used for predictions, hashed into ``candidate.json``
    and, if chosen, copied into the Triton repository.
    """
    import torch

    from prumux_compile.bench.timing import interleaved
    from prumux_compile.checkpoint import from_raw, read_raw
    from prumux_compile.engines import registry
    from prumux_compile.engines.base import Compiled, EngineConfig
    from prumux_compile.export.inputs import realistic_inputs
    from prumux_compile.export.onnx_export import export_onnx
    from prumux_compile.export.spec import spec_for_ir
    from prumux_compile.kernels import build_module
    from prumux_compile.passes import compile_ir
    from prumux_compile.report.stats import cofi_sparsity, summary

    raw = read_raw(ckpt)
    ir = from_raw(raw, seq_len=opts.seq_len)
    n = ir.num_instances
    positions = int(ir.embeddings.position.shape[0])
    if not ir.is_muxed and opts.seq_len > positions:
        raise InputError(f"{ckpt}: --seq-len {opts.seq_len} exceeds the checkpoint's {positions} position embeddings")
    batch_sizes = list(opts.batch_sizes or (8 * n,))
    backend = registry.get(backend_name)
    precision = precision or backend.default_precision
    cache_dir = _cache_root(opts) / _cache_key(raw.files, backend_name, opts, batch_sizes, eval_hash, precision)
    if opts.cache and (cache_dir / "candidate.json").is_file():
        _log(opts, f"{cid}: cached ({cache_dir})")
        _copy_files(cache_dir, cand_dir)
        info = json.loads((cand_dir / "candidate.json").read_text())
        # the cache is keyed by content: the same weights may come back under another folder name
        info.update(id=cid, checkpoint=str(ckpt), cached=True)
        return info

    _log(opts, f"{cid}: passes")
    pruned, _ = compile_ir(ir, "pruning")
    final, reports = compile_ir(ir, "all")
    cand_dir.mkdir(parents=True, exist_ok=True)
    spec = spec_for_ir(final)
    shared = {} if shared is None else shared
    earlier = shared.get(str(Path(ckpt).resolve()))
    if earlier is not None and (earlier["dir"] / "model.onnx").is_file():
        _log(opts, f"{cid}: export (shared with {earlier['dir'].name})")
        export_info = dict(earlier["export_info"])
        _link_export(earlier["dir"], cand_dir)
    else:
        _log(opts, f"{cid}: export")
        module = build_module(final)
        export_info = export_onnx(module, spec, cand_dir / "model.onnx")
        del module
        shared[str(Path(ckpt).resolve())] = {"dir": cand_dir, "export_info": export_info}
    _log(opts, f"{cid}: engine {backend_name} {precision}")
    options = {}
    vocab = int(final.embeddings.word.shape[0])
    label2id = {str(v): int(k) for k, v in final.id2label.items()}
    if "calibration" in backend.option_names and precision != "fp32":
        options["calibration"] = _calibration_inputs(opts, ckpt, label2id, vocab, spec.type_vocab_size)
    config = EngineConfig(precision=precision, batch_sizes=tuple(batch_sizes), seq_len=opts.seq_len,
                          threads=opts.threads, out_dir=cand_dir, options=options)
    artifact = backend.build(Compiled(cand_dir / "model.onnx", spec, final), config)
    _log(opts, f"{cid}: validate ({artifact.precision}, {artifact.criteria.describe()})")
    validation = _validate(backend, artifact, raw, cand_dir / "validation.json")

    _log(opts, f"{cid}: benchmark on {artifact.device}")
    device = torch.device(artifact.device)
    eager = build_module(pruned).to(device)
    torch.set_num_threads(opts.threads)
    timings = []
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
        es, feeds = _eval_inputs(opts, ckpt, label2id, vocab, spec.type_vocab_size)
        logits = _predict(runner, feeds, max(batch_sizes[-1], n))
    del eager
    labels = es.labels if es is not None and es.labels is not None else np.zeros(0, dtype=np.int64)
    np.savez(cand_dir / "predictions.npz", logits=logits, labels=labels)

    primary = timings[-1]
    info = {
        "id": cid,
        "checkpoint": str(ckpt),
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
        "benchmark": timings,
        "batch_size": primary["batch_size"],
        "throughput": primary["engine"]["throughput"],
        "latency_p50_ms": primary["engine"]["p50_ms"],
        "latency_p90_ms": primary["engine"]["p90_ms"],
        "latency_p99_ms": primary["engine"]["p99_ms"],
        "eager_throughput": primary["eager"]["throughput"],
        "speedup_vs_eager": primary["speedup_vs_eager"],
        "cached": False,
    }
    (cand_dir / "candidate.json").write_text(json.dumps(_json_safe(info), indent=2))
    if opts.cache:
        try:
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=_ensure(cache_dir.parent)))
            _copy_files(cand_dir, tmp)
            if cache_dir.exists():
                shutil.rmtree(cache_dir)
            tmp.rename(cache_dir)
        except OSError as exc:  # a cache that cannot be written only costs time
            _log(opts, f"{cid}: cache not written ({exc})")
    return info


def _validate(backend, artifact, raw, out_path: Path) -> dict:
    """Validate the artifact's runnable files (the deployed one included) against the float64 reference with
    the artifact's own criteria (:mod:`prumux_compile.validation`); write ``validation.json``.

    Raises:
        ValidationError: any case outside the criteria, NaN/Inf, nondeterministic, inputs modified, or argmax
            agreement below the criteria's minimum (exit 3).
    """
    from prumux_compile.validation import require_passed, validate, validation_document

    runners = {}
    try:
        for role in artifact.runnable:
            runners[Path(artifact.files[role]).name] = backend.load(artifact.using(role))
        results = validate(runners, raw, artifact.spec, artifact.criteria)
    finally:
        for r in runners.values():
            r.close()
    doc = validation_document(results, artifact.spec, backend=artifact.backend, precision=artifact.precision)
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
    argmax; otherwise a classifier measured by accuracy of the argmax (fault class F24).

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
        recorded = table.get(cid, table.get(info["checkpoint"], table.get(Path(info["checkpoint"]).name)))
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
    label-order / id2label mismatch, fault class F23), undefined correlations, an unlabelled evaluation file."""
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


def _check_eval_data(opts: BuildOptions, ckpt: Path, task: str) -> None:
    """Read the first rows of ``--eval-data`` the way the build will, before anything is built.

    Raises:
        InputError: anything :func:`prumux_compile.bench.data.load_eval_data` refuses; and, unless
            ``opts.eval_unlabelled``, a file without a recognised label column (the message names the columns
            found and the accepted ones) or whose label column is empty in the first rows.
    """
    from prumux_compile.bench.data import LABEL_COLUMNS, find_tokenizer_dir, load_eval_data

    cfg = json.loads((ckpt / "config.json").read_text()) if (ckpt / "config.json").is_file() else {}
    label2id = {str(v): int(k) for k, v in (cfg.get("id2label") or {}).items()} or None
    es = load_eval_data(opts.eval_data, tokenizer_dir=find_tokenizer_dir(ckpt), seq_len=opts.seq_len,
                        label2id=label2id, limit=8, task=task)
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
        TritonConfigError (6). On any error nothing is left at ``opts.out`` (a previous OUT stays untouched).
    """
    from prumux_compile.bench.timing import environment
    from prumux_compile.engines import registry
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
    # file-system problems are found now, not after minutes of compiling (fault class F27)
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
    if opts.accuracy_table is not None:
        read_accuracy_table(Path(opts.accuracy_table))  # fail fast
    ckpts = discover_checkpoints(checkpoints)
    task = _task_of(ckpts)
    if opts.eval_data is not None:  # fail fast on a bad evaluation file, before anything is built
        _check_eval_data(opts, ckpts[0][1], task)

    avail = registry.availability()
    backends = []
    notes = []
    for name in opts.backends:
        if name not in avail:
            raise InputError(f"unknown backend {name!r}; known: {', '.join(registry.names())}")
        ok, why = avail[name]
        if ok:
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
        infos = []
        rejected = []
        shared: dict = {}
        multi_backend = len({b for b, _ in plan}) > 1
        multi_precision = len({p for _, p in plan}) > 1
        total = len(ckpts) * len(plan)
        for cid, path in ckpts:
            for b, prec in plan:
                full_id = candidate_id(cid, b, prec, multi_backend, multi_precision)
                _candidate_event(opts, len(infos) + len(rejected), total, full_id, None)
                try:
                    infos.append(_build_candidate(full_id, path, b, opts, tmp / "candidates" / full_id, eval_hash,
                                                  prec, shared))
                except (ValidationError, EngineBuildError) as exc:
                    if prec == "fp32" or named:  # fp32 must match the reference; a named precision was asked for
                        raise
                    # a reduced precision outside its criteria on this checkpoint: a measured outcome, not a bug
                    shutil.rmtree(tmp / "candidates" / full_id, ignore_errors=True)
                    for key in [k for k, v in shared.items() if v["dir"] == tmp / "candidates" / full_id]:
                        del shared[key]  # its export went with it
                    rejected.append({"id": full_id, "checkpoint": str(path), "backend": b, "precision": prec,
                                     "reason": str(exc), "exit_code": exc.exit_code})
                    notes.append(f"{full_id}: rejected ({prec} outside its criteria or not buildable): {exc}")
                    _log(opts, f"{full_id}: rejected: {exc}")
                    continue
                _candidate_event(opts, len(infos) + len(rejected), total, full_id, infos[-1])
        if not infos:
            raise ValidationError("no candidate passed validation: " + "; ".join(r["reason"] for r in rejected))
        _log(opts, "accuracy and selection")
        baseline = _baseline_id(infos)
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
        if selection.clamped_from is not None:  # fault class F23: a drop larger than the baseline's value
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
            prediction = predict_with_precision(
                primary, threshold=selection.threshold,
                reference=f"{base.backend}/{base.precision}" if several else base.precision,
                nums=tuple(n for n in (1, 2, 3, 4, 5, 6, 8, 10) if n <= 2 * n_max),
                sparsities=np.linspace(0.0, s_max, 16)).to_dict()
        report = {
            "tool": {"name": "prumux-compile", "version": _tool_version()},
            "environment": environment(threads=opts.threads),
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()
                        if k not in ("out", "cache_dir") and not callable(v)},
            "inputs": [{"id": cid, "path": str(p)} for cid, p in ckpts],
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
            "warnings": notes,
        }
        if selection.chosen is None:
            raise_if_none(selection)
        chosen = next(i for i in infos if i["id"] == selection.chosen.id)
        pareto_plot(infos, chosen["id"], tmp / "pareto.png", accuracy_label=kind.split(" (")[0],
                    threshold=selection.threshold)
        _log(opts, "writing outputs (pareto.png, model_repository, report.json)")
        repo = write_candidate_repository(tmp / "model_repository", chosen, tmp / "candidates" / chosen["id"],
                                          backend=opts.triton_backend)
        if repo is None:
            why = ((chosen.get("artifact") or {}).get("deployment") or {}).get("note")
            notes.append(f"{chosen['id']}: backend {chosen['backend']} has no Triton platform"
                         + (f" ({why})" if why else "") + "; no model repository written")
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


def _model_name(info: dict) -> str:
    return "prumux_" + "".join(ch if ch.isalnum() else "_" for ch in info["id"]).strip("_")


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
        TritonConfigError / InputError: as :func:`~prumux_compile.triton.write_repository`.
    """
    from prumux_compile.engines.base import Deployment
    from prumux_compile.triton import write_repository

    art = info.get("artifact") or {}
    dep = Deployment.from_dict(art.get("deployment"))
    if dep is None or dep.platform is None:
        return None
    kwargs = dict(name=name or _model_name(info), model_path=Path(cand_dir) / art["path"], platform=dep.platform,
                  num_instances=info["num_instances"], instance_kind=dep.instance_kind, overwrite=overwrite,
                  intra_op_num_threads=dep.intra_op_num_threads, inter_op_num_threads=dep.inter_op_num_threads,
                  graph_optimization_level=dep.graph_optimization_level, gpu_accelerators=dep.accelerators)
    if dep.platform == "onnxruntime_onnx":
        kwargs["backend"] = backend
    elif backend == "python":
        from prumux_compile.errors import TritonConfigError

        raise TritonConfigError(f"the Python-backend variant serves ONNX artifacts only; {info['id']} is a "
                                f"{dep.platform} artifact: use the native backend")
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
