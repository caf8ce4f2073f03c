"""Text in, labels out: a Triton ensemble around an engine model of this package.

For an engine model ``<engine>`` already in a repository (:func:`~prumux_compile.triton.write_repository`),
:func:`write_text_ensemble` adds

==========================  ==============  ===================================================================
model                       backend         tensors
==========================  ==============  ===================================================================
``<engine>_tokenizer``      python          ``TEXT`` BYTES [-1] -> ``input_ids`` / ``attention_mask`` /
                                            ``token_type_ids`` INT64 (the engine's dims), ``TRUNCATED`` BOOL [1];
                                            the checkpoint's tokenizer files in ``1/tokenizer/``
``<engine>``                (unchanged)     token ids -> ``logits`` FP32 [C]; plus ``label_filename:
                                            "labels.txt"`` on ``logits`` (classification heads)
``<engine>_postprocess``    python          ``LOGITS`` FP32 [C] -> ``LABEL`` BYTES [1], ``SCORES`` FP32 [C]
``<engine>_text``           ensemble        ``TEXT`` -> ``LABEL``, ``SCORES``, ``TRUNCATED``
==========================  ==============  ===================================================================

A client sends ``TEXT`` ``[batch, 1]`` (sentences) or ``[batch, 2]`` (sentence pairs) and reads the label name,
the softmax scores (a regression head: its value) and whether the row was truncated to the compiled length.
Clients that tokenize themselves keep calling ``<engine>`` with token ids; with ``label_filename`` set, Triton's
classification extension (``class_count`` / the ``classification`` output parameter) returns
``"<value>:<index>:<label>"`` strings from it.

Field names follow Triton's ``model_config.proto`` (``ModelEnsembling.Step``: ``model_name``, ``model_version``,
``input_map`` / ``output_map`` keyed by the composing model's tensor names with the ensemble's tensor names as
values; ``ModelOutput.label_filename``: a file in the model directory, one label per line in index order) and
the user guide's "Ensemble Models" section (``platform: "ensemble"``, no ``instance_group``, a version directory).

Multiplexing: the tokenizer keeps every request's rows together and in order, so the engine receives each client
request as one request; the Python-backend engine's ``prumux.isolate_requests`` then keeps requests whose batch
is not a multiple of N out of other clients' mux groups, exactly as for token-id clients.

:func:`validate_ensemble` checks an ensemble against its steps (names, data types and dims agree across steps,
batch sizes, label files); the writer runs it before anything is written.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Mapping, Sequence

from prumux_compile.errors import CheckpointError, InputError, TritonConfigError
from prumux_compile.fsutil import output_tempdir
from prumux_compile.triton.config import PARAM_MAX_SEQ_LEN, config_to_text, load_config, model_config_pb2

__all__ = ["TEXT", "LABEL", "SCORES", "TRUNCATED", "LOGITS", "LABELS_FILE", "ensemble_names",
           "build_tokenizer_config", "build_postprocess_config", "build_ensemble_config", "label_engine_config",
           "validate_ensemble", "validate_ensemble_repository", "write_text_ensemble", "TOKENIZER_FILES"]

#: Tensor names of the ensemble's interface.
TEXT, LABEL, SCORES, TRUNCATED = "TEXT", "LABEL", "SCORES", "TRUNCATED"
#: Input of the postprocess step (mapped from the engine's ``logits``).
LOGITS = "LOGITS"
#: The engine output every compiled model has.
ENGINE_OUTPUT = "logits"
#: Label file of the engine model's ``logits`` (``label_filename``), in the engine's model directory.
LABELS_FILE = "labels.txt"
#: Files copied from the checkpoint's tokenizer folder (those present; ``config.json`` lets ``AutoTokenizer`` find
#: the tokenizer class where ``tokenizer_config.json`` does not name it, as when the checkpoint itself is loaded).
TOKENIZER_FILES: tuple[str, ...] = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                    "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
                                    "sentencepiece.bpe.model", "tokenizer.model", "config.json")
#: Python-backend model files shipped with this package.
TOKENIZER_MODEL_SOURCE = Path(__file__).with_name("tokenizer_model.py")
POSTPROCESS_MODEL_SOURCE = Path(__file__).with_name("postprocess_model.py")
PARAM_MAX_LENGTH = "prumux.max_length"
PARAM_TRUNCATE = "prumux.truncate"
PARAM_LABELS = "prumux.labels"
PARAM_TASK = "prumux.task"
#: Sentences used to check that the copied tokenizer tokenizes as the original does.
_PROBE = (["A probe sentence, with punctuation; and UNUSUAL casing!", "zwei Wörter"], ["and a second one", "x"])


def ensemble_names(engine_name: str) -> dict[str, str]:
    """``{"tokenizer", "postprocess", "ensemble"}`` model names for the engine model ``engine_name``."""
    return {"tokenizer": f"{engine_name}_tokenizer", "postprocess": f"{engine_name}_postprocess",
            "ensemble": f"{engine_name}_text"}


def _tensor(msg, name: str, dtype: str, dims: Sequence[int], pb2):
    msg.name = name
    msg.data_type = pb2.DataType.Value(dtype)
    msg.dims.extend(int(d) for d in dims)
    return msg


def _python_config(name: str, max_batch_size: int, instance_count: int, pb2):
    cfg = pb2.ModelConfig()
    cfg.name = name
    cfg.backend = "python"
    cfg.max_batch_size = int(max_batch_size)
    group = cfg.instance_group.add()
    group.count = int(instance_count)
    group.kind = pb2.ModelInstanceGroup.Kind.Value("KIND_CPU")
    return cfg


def _lead(engine_cfg) -> list[int]:
    """The explicit batch dimension of every tensor in the ensemble: none when the engine model batches
    (``max_batch_size`` > 0, Triton adds it), ``[-1]`` when it does not (e.g. Triton's OpenVINO backend, whose
    configs here have ``max_batch_size: 0`` and dims ``[-1, ...]``). The Python steps see ``[batch, ...]`` arrays
    either way."""
    return [] if engine_cfg.max_batch_size > 0 else [-1]


def _engine_output(engine_cfg):
    out = next((o for o in engine_cfg.output if o.name == ENGINE_OUTPUT), None)
    want = 1 + len(_lead(engine_cfg))
    if out is None or len(out.dims) != want:
        shape = "[C]" if want == 1 else "[-1, C] (a model without batching)"
        raise TritonConfigError(f"engine model {engine_cfg.name!r} has no {ENGINE_OUTPUT!r} output of dims {shape}")
    return out


def build_tokenizer_config(name: str, engine_cfg, *, max_length: int, truncate: bool = True,
                           instance_count: int = 1):
    """``ModelConfig`` of the tokenizer step: ``TEXT`` BYTES [-1] in; the engine's inputs (same names, data types
    and dims) and ``TRUNCATED`` BOOL [1] out; parameters ``prumux.max_length`` (L) and ``prumux.truncate``."""
    pb2 = model_config_pb2()
    cfg = _python_config(name, engine_cfg.max_batch_size, instance_count, pb2)
    lead = _lead(engine_cfg)
    _tensor(cfg.input.add(), TEXT, "TYPE_STRING", lead + [-1], pb2)
    for t in engine_cfg.input:
        out = cfg.output.add()
        out.name, out.data_type = t.name, t.data_type
        out.dims.extend(t.dims)
    _tensor(cfg.output.add(), TRUNCATED, "TYPE_BOOL", lead + [1], pb2)
    cfg.parameters[PARAM_MAX_LENGTH].string_value = str(int(max_length))
    cfg.parameters[PARAM_TRUNCATE].string_value = "true" if truncate else "false"
    return cfg


def build_postprocess_config(name: str, engine_cfg, *, labels: Sequence[str], task: str, instance_count: int = 1):
    """``ModelConfig`` of the postprocess step: ``LOGITS`` FP32 [C] in (the engine's ``logits``), ``LABEL`` BYTES
    [1] and ``SCORES`` FP32 [C] out; parameters ``prumux.labels`` (JSON list) and ``prumux.task``."""
    pb2 = model_config_pb2()
    logits = _engine_output(engine_cfg)
    cfg = _python_config(name, engine_cfg.max_batch_size, instance_count, pb2)
    _tensor(cfg.input.add(), LOGITS, "TYPE_FP32", list(logits.dims), pb2)
    _tensor(cfg.output.add(), LABEL, "TYPE_STRING", _lead(engine_cfg) + [1], pb2)
    _tensor(cfg.output.add(), SCORES, "TYPE_FP32", list(logits.dims), pb2)
    cfg.parameters[PARAM_LABELS].string_value = json.dumps(list(map(str, labels)), ensure_ascii=False)
    cfg.parameters[PARAM_TASK].string_value = task
    return cfg


def build_ensemble_config(name: str, engine_cfg, tokenizer_cfg, postprocess_cfg):
    """``ModelConfig`` of the ensemble (``platform: "ensemble"``): ``TEXT`` -> tokenizer -> engine -> postprocess
    -> ``LABEL``, ``SCORES`` (+ ``TRUNCATED`` from the tokenizer). Tensors between steps keep the engine's names."""
    pb2 = model_config_pb2()
    logits = _engine_output(engine_cfg)
    cfg = pb2.ModelConfig()
    cfg.name = name
    cfg.platform = "ensemble"
    cfg.max_batch_size = engine_cfg.max_batch_size
    lead = _lead(engine_cfg)
    _tensor(cfg.input.add(), TEXT, "TYPE_STRING", lead + [-1], pb2)
    _tensor(cfg.output.add(), LABEL, "TYPE_STRING", lead + [1], pb2)
    _tensor(cfg.output.add(), SCORES, "TYPE_FP32", list(logits.dims), pb2)
    _tensor(cfg.output.add(), TRUNCATED, "TYPE_BOOL", lead + [1], pb2)
    tok = cfg.ensemble_scheduling.step.add()
    tok.model_name, tok.model_version = tokenizer_cfg.name, -1
    tok.input_map[TEXT] = TEXT
    for t in engine_cfg.input:
        tok.output_map[t.name] = t.name
    tok.output_map[TRUNCATED] = TRUNCATED
    eng = cfg.ensemble_scheduling.step.add()
    eng.model_name, eng.model_version = engine_cfg.name, -1
    for t in engine_cfg.input:
        eng.input_map[t.name] = t.name
    eng.output_map[ENGINE_OUTPUT] = ENGINE_OUTPUT
    post = cfg.ensemble_scheduling.step.add()
    post.model_name, post.model_version = postprocess_cfg.name, -1
    post.input_map[LOGITS] = ENGINE_OUTPUT
    post.output_map[LABEL] = LABEL
    post.output_map[SCORES] = SCORES
    return cfg


def label_engine_config(engine_cfg, labels: Sequence[str]):
    """A copy of the engine's config whose ``logits`` output names :data:`LABELS_FILE` (``label_filename``).

    Raises:
        TritonConfigError: the number of labels differs from the ``logits`` width, or a label holds a line break
            (the file has one label per line).
    """
    pb2 = model_config_pb2()
    cfg = pb2.ModelConfig()
    cfg.CopyFrom(engine_cfg)
    out = _engine_output(cfg)
    if int(out.dims[-1]) != len(labels):
        raise TritonConfigError(f"engine model {cfg.name!r}: {len(labels)} labels for a logits width of "
                                f"{int(out.dims[-1])}")
    bad = [x for x in labels if "\n" in x or "\r" in x]
    if bad:
        raise TritonConfigError(f"label {bad[0]!r} holds a line break; Triton's label file has one label per line")
    out.label_filename = LABELS_FILE
    return cfg


# ---------------------------------------------------------------------------------------------- validation
def _dims_agree(a: Sequence[int], b: Sequence[int]) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b))


def _name(pb2, dtype: int) -> str:
    return pb2.DataType.Name(dtype)


def validate_ensemble(config, steps: Mapping[str, object], *,
                      label_counts: Mapping[str, Mapping[str, int | None]] | None = None) -> list[str]:
    """Problems of an ensemble config against the configs of the models its steps call (empty = valid).

    Rules (Triton user guide, "Ensemble Models"; ``model_config.proto``):

    * ``platform: "ensemble"`` with at least one step; no ``instance_group`` or ``dynamic_batching`` of its own;
    * every step names a model of ``steps``; its ``input_map`` keys are inputs and ``output_map`` keys outputs of
      that model; every input of that model is mapped; an ensemble tensor has exactly one producer (an ensemble
      input or one step output) and the steps form no cycle;
    * data types are equal and dims agree (same rank, equal where both are fixed) between a tensor's producer
      and each consumer, and between the ensemble's outputs and what produces them; every ensemble input is
      consumed;
    * the ensemble's ``max_batch_size`` is at most each step model's, and step models batch when it does;
    * an output with a ``label_filename`` has that file with one line per class (``label_counts``: model ->
      output -> lines, None = file missing; outputs not listed are not checked).

    Args:
        config: the ensemble ``ModelConfig`` (or a ``config.pbtxt`` path).
        steps: model name -> ``ModelConfig`` of every model the steps may call.
        label_counts: line counts of the label files, when they are known.
    """
    pb2 = model_config_pb2()
    try:
        cfg = load_config(config)
    except TritonConfigError as exc:
        return [str(exc)]
    problems: list[str] = []
    if cfg.platform != "ensemble":
        problems.append(f"platform {cfg.platform!r}: an ensemble needs platform 'ensemble'")
    if not cfg.HasField("ensemble_scheduling") or not cfg.ensemble_scheduling.step:
        problems.append("no ensemble_scheduling steps")
        return problems
    if len(cfg.instance_group):
        problems.append("an ensemble takes no instance_group (its steps are scaled by their own)")
    if cfg.HasField("dynamic_batching"):
        problems.append("an ensemble takes no dynamic_batching (its steps batch on their own)")

    tensors: dict[str, tuple[int, list[int], str]] = {}  # ensemble tensor -> (dtype, dims, producer)
    for t in cfg.input:
        if t.name in tensors:
            problems.append(f"ensemble input {t.name!r} is listed twice")
        tensors[t.name] = (t.data_type, list(t.dims), "the ensemble input")
    producers: dict[str, int] = {}  # tensor -> producing step index
    for i, step in enumerate(cfg.ensemble_scheduling.step):
        model = steps.get(step.model_name)
        if model is None:
            problems.append(f"step {i}: model {step.model_name!r} is not in the repository")
            continue
        outputs = {o.name: o for o in model.output}
        for key, value in step.output_map.items():
            if key not in outputs:
                problems.append(f"step {i} ({step.model_name}): output_map key {key!r} is not an output of the "
                                f"model (it has {', '.join(outputs) or 'none'})")
                continue
            if value in tensors:
                problems.append(f"ensemble tensor {value!r} is produced twice ({tensors[value][2]} and step {i} "
                                f"{step.model_name}.{key})")
                continue
            tensors[value] = (outputs[key].data_type, list(outputs[key].dims), f"step {i} {step.model_name}.{key}")
            producers[value] = i
        if cfg.max_batch_size > 0 and model.max_batch_size < cfg.max_batch_size:
            problems.append(f"step {i} ({step.model_name}): max_batch_size {model.max_batch_size} is below the "
                            f"ensemble's {cfg.max_batch_size}")
    consumed: set[str] = set()
    edges: dict[int, set[int]] = {}
    for i, step in enumerate(cfg.ensemble_scheduling.step):
        model = steps.get(step.model_name)
        if model is None:
            continue
        inputs = {t.name: t for t in model.input}
        for key, value in step.input_map.items():
            consumed.add(value)
            if key not in inputs:
                problems.append(f"step {i} ({step.model_name}): input_map key {key!r} is not an input of the model "
                                f"(it has {', '.join(inputs) or 'none'})")
                continue
            if value not in tensors:
                problems.append(f"step {i} ({step.model_name}): input {key!r} reads {value!r}, which no ensemble "
                                "input or step output provides")
                continue
            dtype, dims, origin = tensors[value]
            want = inputs[key]
            if dtype != want.data_type:
                problems.append(f"step {i} ({step.model_name}): input {key!r} is {_name(pb2, want.data_type)} but "
                                f"{value!r} ({origin}) is {_name(pb2, dtype)}")
            if not _dims_agree(dims, list(want.dims)):
                problems.append(f"step {i} ({step.model_name}): input {key!r} has dims {list(want.dims)} but "
                                f"{value!r} ({origin}) has {dims}")
            if value in producers:
                edges.setdefault(producers[value], set()).add(i)
        for name, t in inputs.items():
            if name not in step.input_map and not t.optional:
                problems.append(f"step {i} ({step.model_name}): input {name!r} is not mapped")
    for t in cfg.output:
        if t.name not in tensors or t.name in (x.name for x in cfg.input):
            problems.append(f"ensemble output {t.name!r} is produced by no step")
            continue
        dtype, dims, origin = tensors[t.name]
        if dtype != t.data_type:
            problems.append(f"ensemble output {t.name!r} is {_name(pb2, t.data_type)} but {origin} is "
                            f"{_name(pb2, dtype)}")
        if not _dims_agree(dims, list(t.dims)):
            problems.append(f"ensemble output {t.name!r} has dims {list(t.dims)} but {origin} has {dims}")
    for t in cfg.input:
        if t.name not in consumed:
            problems.append(f"ensemble input {t.name!r} is read by no step")
    if _has_cycle(edges):
        problems.append("the steps form a cycle (a step reads, directly or not, what it produces)")
    for name, model in steps.items():
        if cfg.max_batch_size > 0 and any(s.model_name == name for s in cfg.ensemble_scheduling.step) \
                and model.max_batch_size == 0:
            problems.append(f"model {name!r} does not batch (max_batch_size 0) but the ensemble does")
        for out in model.output:
            if not out.label_filename or label_counts is None or out.name not in label_counts.get(name, {}):
                continue
            lines = label_counts[name][out.name]
            width = int(out.dims[-1]) if len(out.dims) else 1
            if lines is None:
                problems.append(f"model {name!r}: label file {out.label_filename!r} of output {out.name!r} is missing")
            elif lines != width:
                problems.append(f"model {name!r}: label file {out.label_filename!r} has {lines} line(s) for "
                                f"{width} classes of output {out.name!r}")
    return problems


def _has_cycle(edges: Mapping[int, set[int]]) -> bool:
    state: dict[int, int] = {}

    def visit(v: int) -> bool:
        state[v] = 1
        for w in edges.get(v, ()):
            if state.get(w) == 1 or (w not in state and visit(w)):
                return True
        state[v] = 2
        return False

    return any(v not in state and visit(v) for v in list(edges))


def _label_lines(path: Path) -> int | None:
    if not path.is_file():
        return None
    return len(path.read_text(encoding="utf-8").splitlines())


def validate_ensemble_repository(repo_dir: str | Path, name: str) -> list[str]:
    """:func:`validate_ensemble` of ``repo_dir/name`` against the models of ``repo_dir`` its steps call, their label
    files read from disk; also: the ensemble has a version directory, every Python-backend step has ``1/model.py``
    and a tokenizer step has its ``1/tokenizer/`` files."""
    repo = Path(repo_dir)
    try:
        cfg = load_config(repo / name / "config.pbtxt")
    except TritonConfigError as exc:
        return [str(exc)]
    problems: list[str] = []
    if not any(p.is_dir() and p.name.isdigit() for p in (repo / name).iterdir()):
        problems.append(f"ensemble {name!r} has no version directory (Triton needs one, e.g. {name}/1/)")
    steps, counts = {}, {}
    for step in cfg.ensemble_scheduling.step:
        path = repo / step.model_name / "config.pbtxt"
        if not path.is_file():
            continue
        try:
            model = load_config(path)
        except TritonConfigError as exc:
            problems.append(str(exc))
            continue
        steps[step.model_name] = model
        counts[step.model_name] = {o.name: _label_lines(repo / step.model_name / o.label_filename)
                                   for o in model.output if o.label_filename}
        if model.backend == "python" and not (repo / step.model_name / "1" / "model.py").is_file():
            problems.append(f"model {step.model_name!r} (python backend) has no 1/model.py")
        if PARAM_MAX_LENGTH in model.parameters and not any(
                (repo / step.model_name / "1" / "tokenizer" / f).is_file() for f in TOKENIZER_FILES[:5]):
            problems.append(f"model {step.model_name!r} has no tokenizer files in 1/tokenizer/")
    return problems + validate_ensemble(cfg, steps, label_counts=counts)


# ---------------------------------------------------------------------------------------------- writing
def _copy_tokenizer(src: Path, dst: Path) -> list[str]:
    dst.mkdir(parents=True)
    copied = [name for name in TOKENIZER_FILES if (src / name).is_file()]
    for name in copied:
        shutil.copyfile(src / name, dst / name)
    return copied


def _check_tokenizer_copy(src: Path, dst: Path) -> None:
    """The copied tokenizer loads and tokenizes the probe sentences (and pairs) exactly as the original does.

    Raises:
        CheckpointError: it cannot be loaded, or tokenizes differently (a file it needs was not copied).
    """
    from prumux_compile.bench.data import load_tokenizer

    original, copy = load_tokenizer(src), load_tokenizer(dst)
    for pairs in (None, _PROBE[1]):
        a = original(_PROBE[0], pairs)["input_ids"]
        b = copy(_PROBE[0], pairs)["input_ids"]
        if a != b:
            raise CheckpointError(f"the tokenizer copied from {src} tokenizes differently from the original "
                                  f"(copied: {', '.join(sorted(p.name for p in dst.iterdir()))})")


def write_text_ensemble(repo_dir: str | Path, *, engine_name: str, tokenizer_dir: str | Path, max_length: int,
                        labels: Sequence[str], task: str = "classification", truncate: bool = True,
                        instance_count: int = 1, overwrite: bool = False) -> Path:
    """Add the tokenizer, postprocess and ensemble models of the module docstring for ``repo_dir/engine_name``,
    and the engine's label file (classification heads).

    Args:
        repo_dir: the model repository holding the engine model.
        engine_name: the engine model (written by :func:`~prumux_compile.triton.write_repository`).
        tokenizer_dir: the checkpoint's tokenizer folder (its tokenizer files are copied).
        max_length: L, tokens per row: the compiled length (at most the engine's ``prumux.max_seq_len``).
        labels: label name of every output index (``id2label``).
        task: ``"classification"`` or ``"regression"`` (one output; no label file).
        truncate: the tokenizer truncates longer texts (and says so in ``TRUNCATED``); False refuses them.
        instance_count: instances of the tokenizer and postprocess models.
        overwrite: replace existing tokenizer / postprocess / ensemble models.

    Returns:
        The ensemble's model directory ``repo_dir/<engine>_text``.

    Raises:
        TritonConfigError: (exit 6) no engine model, a config the validator refuses, models that exist without
            ``overwrite``; nothing is written then.
        CheckpointError: the tokenizer cannot be loaded, or its copy tokenizes differently.
        InputError: a bad ``task`` or ``max_length``.
    """
    repo = Path(repo_dir)
    if task not in ("classification", "regression"):
        raise InputError(f"task must be classification or regression, got {task!r}")
    engine_dir = repo / engine_name
    engine_cfg = load_config(engine_dir / "config.pbtxt")
    limit = engine_cfg.parameters[PARAM_MAX_SEQ_LEN].string_value if PARAM_MAX_SEQ_LEN in engine_cfg.parameters \
        else ""
    if int(max_length) < 2 or (limit and int(max_length) > int(limit)):
        raise InputError(f"max_length {max_length}: must be in [2, {limit or 'the model limit'}] (the engine's "
                         f"{PARAM_MAX_SEQ_LEN})")
    names = ensemble_names(engine_name)
    labelled = label_engine_config(engine_cfg, labels) if task == "classification" else engine_cfg
    if task == "regression" and len(labels) != int(_engine_output(engine_cfg).dims[0]):
        raise TritonConfigError(f"engine model {engine_name!r}: a regression head has one output, the engine "
                                f"{int(_engine_output(engine_cfg).dims[0])}")
    tok_cfg = build_tokenizer_config(names["tokenizer"], engine_cfg, max_length=max_length, truncate=truncate,
                                     instance_count=instance_count)
    post_cfg = build_postprocess_config(names["postprocess"], engine_cfg, labels=labels, task=task,
                                        instance_count=instance_count)
    ens_cfg = build_ensemble_config(names["ensemble"], engine_cfg, tok_cfg, post_cfg)
    counts = {engine_name: {ENGINE_OUTPUT: len(labels)}} if task == "classification" else {}
    problems = validate_ensemble(ens_cfg, {engine_name: labelled, tok_cfg.name: tok_cfg, post_cfg.name: post_cfg},
                                 label_counts=counts)
    if problems:
        more = f" (+{len(problems) - 1} more: {'; '.join(problems[1:])})" if len(problems) > 1 else ""
        raise TritonConfigError(f"invalid Triton ensemble for {engine_name}: {problems[0]}{more}")
    existing = [n for n in names.values() if (repo / n).exists()]
    if existing and not overwrite:
        raise TritonConfigError(f"model directory {repo / existing[0]} exists; pass overwrite=True (--overwrite) to "
                                "replace it")

    tmp = output_tempdir(".text-ensemble.tmp-", repo)
    moved: list[tuple[Path, Path | None]] = []  # (target, its previous version moved aside)
    try:
        staged = {}
        for key, cfg, source in (("tokenizer", tok_cfg, TOKENIZER_MODEL_SOURCE),
                                 ("postprocess", post_cfg, POSTPROCESS_MODEL_SOURCE), ("ensemble", ens_cfg, None)):
            d = tmp / "new" / names[key]
            (d / "1").mkdir(parents=True)
            (d / "config.pbtxt").write_text(config_to_text(cfg), encoding="utf-8")
            if source is not None:
                shutil.copyfile(source, d / "1" / "model.py")
            staged[key] = d
        copied = _copy_tokenizer(Path(tokenizer_dir), staged["tokenizer"] / "1" / "tokenizer")
        if not copied:
            raise CheckpointError(f"{tokenizer_dir}: no tokenizer files (looked for {', '.join(TOKENIZER_FILES)})")
        _check_tokenizer_copy(Path(tokenizer_dir), staged["tokenizer"] / "1" / "tokenizer")
        engine_files = {}
        if task == "classification":
            (tmp / LABELS_FILE).write_text("".join(f"{x}\n" for x in labels), encoding="utf-8")
            (tmp / "engine.pbtxt").write_text(config_to_text(labelled), encoding="utf-8")
            engine_files = {LABELS_FILE: tmp / LABELS_FILE, "config.pbtxt": tmp / "engine.pbtxt"}
        (tmp / "old").mkdir()
        for key, d in staged.items():
            target = repo / names[key]
            old = None
            if target.exists():
                old = tmp / "old" / names[key]
                os.rename(target, old)
            moved.append((target, old))
            os.rename(d, target)
        for rel, src in engine_files.items():  # the engine: label file first, then the config naming it
            target = engine_dir / rel
            old = None
            if target.exists():
                old = tmp / "old" / f"engine-{rel}"
                shutil.copyfile(target, old)
            moved.append((target, old))
            os.replace(src, target)
    except BaseException:
        for target, old in reversed(moved):  # put every previous version back
            try:
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
                if old is not None:
                    os.replace(old, target)
            except OSError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return repo / names["ensemble"]
