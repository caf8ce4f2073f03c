"""Check a Triton ``ModelConfig`` against the model it serves (fault classes F12–F14 in docs/field-faults.md).

Two entry points share one set of tensor checks:

* :func:`validate_config` — against an ONNX graph (``onnxruntime_onnx`` platform or ``python`` backend);
* :func:`validate_plan_config` — against a TensorRT plan's binding shapes and optimization profiles.

Each returns a list of one-line problems (empty = valid); :func:`check_or_raise` and
:func:`check_plan_or_raise` raise :class:`~prumux_compile.errors.TritonConfigError` (exit code 6).

Rules (docs/field-faults.md F12–F14; Triton model-configuration docs, "Maximum Batch Size",
"Inputs and Outputs", "Dynamic Batcher"):

* names: config inputs/outputs are exactly the graph's inputs/outputs;
* dtypes: the Triton type of the graph's element type (TYPE_INT64 inputs, TYPE_FP32 ``logits``);
* ``dims`` exclude the batch axis (rank = graph rank − 1), ``-1`` exactly where the graph axis is
  symbolic and the graph's value where it is fixed; the graph's batch axis itself must be dynamic;
* ``max_batch_size`` > 0 and a multiple of N; every ``preferred_batch_size`` a multiple of N, ≤ max;
  the ``openvino`` backend (an IR made from the ONNX graph, checked against that graph) takes ``max_batch_size``
  0 instead — no Triton batching, full-shape ``dims``, no ``dynamic_batching`` — because that backend fixes a
  batching model's batch and pads smaller ones, which would mix padding rows into mux groups; only its documented
  parameters are accepted;
* TensorRT plans: every optimization profile starts at batch 1, all profiles share one max batch,
  and ``max_batch_size`` equals it (F14 in docs/field-faults.md, triton server#7056).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from prumux_compile.errors import TritonConfigError
from prumux_compile.triton.config import (
    INSTANCE_KINDS,
    PARAM_NUM_INSTANCES,
    config_parameters,
    load_config,
    model_config_pb2,
)
from prumux_compile.triton.interface import (
    INPUT_DTYPE,
    INPUT_NAMES,
    OUTPUT_DTYPE,
    OUTPUT_NAME,
    ModelInterface,
    TensorSpec,
    read_onnx_interface,
)

#: One optimization profile: input name -> (min shape, opt shape, max shape), batch axis first.
Profile = Mapping[str, tuple[Sequence[int], Sequence[int], Sequence[int]]]


def _load(config) -> tuple[object | None, list[str]]:
    try:
        return load_config(config), []
    except TritonConfigError as exc:
        return None, [str(exc)]


def _resolve_n(cfg, num_instances: int | None, model_n: int | None, problems: list[str]) -> int | None:
    params = config_parameters(cfg)
    param_n: int | None = None
    if PARAM_NUM_INSTANCES in params:
        try:
            param_n = int(params[PARAM_NUM_INSTANCES])
        except ValueError:
            problems.append(f"parameter {PARAM_NUM_INSTANCES}={params[PARAM_NUM_INSTANCES]!r} is not an integer")
    n = num_instances if num_instances is not None else (param_n if param_n is not None else model_n)
    if n is None:
        problems.append(
            "num_instances unknown: pass it, or set parameter prumux.num_instances / ONNX metadata prumux.num_instances"
        )
        return None
    if n < 1:
        problems.append(f"num_instances must be >= 1, got {n}")
        return None
    if param_n is not None and param_n != n:
        problems.append(f"parameter {PARAM_NUM_INSTANCES}={param_n} disagrees with num_instances={n}")
    return n


def _check_batching(cfg, n: int | None, problems: list[str]) -> None:
    mbs = cfg.max_batch_size
    if cfg.backend == "openvino":
        if mbs != 0:
            problems.append(f"max_batch_size={mbs}: the openvino backend must not batch a multiplexed model "
                            "(it fixes the batch and pads with rows that would share mux groups); use 0")
        if cfg.HasField("dynamic_batching"):
            problems.append("dynamic_batching needs max_batch_size > 0; the openvino config has none")
    elif mbs <= 0:
        problems.append(f"max_batch_size={mbs}: must be > 0 (the model batches; every axis 0 is the batch)")
    elif n is not None and mbs % n:
        problems.append(f"max_batch_size={mbs} is not a multiple of num_instances={n}")
    if cfg.HasField("dynamic_batching"):
        seen: set[int] = set()
        for b in cfg.dynamic_batching.preferred_batch_size:
            if b <= 0:
                problems.append(f"preferred_batch_size {b} must be > 0")
            elif n is not None and b % n:
                problems.append(f"preferred_batch_size {b} is not a multiple of num_instances={n}")
            if mbs > 0 and b > mbs:
                problems.append(f"preferred_batch_size {b} exceeds max_batch_size={mbs}")
            if b in seen:
                problems.append(f"preferred_batch_size {b} is listed twice")
            seen.add(b)
    pb2 = model_config_pb2()
    for i, group in enumerate(cfg.instance_group):
        if group.count < 1:
            problems.append(f"instance_group[{i}].count={group.count} must be >= 1")
        kind = pb2.ModelInstanceGroup.Kind.Name(group.kind)
        if kind not in INSTANCE_KINDS:
            problems.append(f"instance_group[{i}].kind={kind} is not one of {', '.join(INSTANCE_KINDS)}")


def _check_tensors(kind: str, cfg_tensors, graph: Sequence[TensorSpec], batching: bool, problems: list[str]) -> None:
    pb2 = model_config_pb2()
    by_name = {t.name: t for t in graph}
    cfg_names = [t.name for t in cfg_tensors]
    for name in sorted({x for x in cfg_names if cfg_names.count(x) > 1}):
        problems.append(f"{kind} {name!r} is listed twice in the config")
    for name in by_name:
        if name not in cfg_names:
            problems.append(f"{kind} {name!r} of the model is missing from the config")
    for t in cfg_tensors:
        spec = by_name.get(t.name)
        if spec is None:
            problems.append(f"config {kind} {t.name!r} is not a model {kind} (model has {', '.join(by_name) or 'none'})")
            continue
        got = pb2.DataType.Name(t.data_type)
        if got != spec.triton_dtype:
            problems.append(f"{kind} {t.name!r}: data_type {got}, model has {spec.triton_dtype} ({spec.dtype})")
        dims = [int(d) for d in t.dims]
        want = list(spec.triton_dims) if batching else [-1 if d is None else d for d in spec.shape]
        if batching and len(dims) == len(spec.shape):
            problems.append(
                f"{kind} {t.name!r}: dims {dims} include the batch axis; with max_batch_size > 0 dims must be {want}"
            )
            continue
        if len(dims) != len(want):
            problems.append(f"{kind} {t.name!r}: dims {dims} have rank {len(dims)}, model needs {want}")
            continue
        for axis, (d, w) in enumerate(zip(dims, want), start=1 if batching else 0):
            if w == -1 and d != -1:
                problems.append(f"{kind} {t.name!r}: axis {axis} is dynamic in the model but fixed to {d} in dims")
            elif w != -1 and d != w:
                problems.append(f"{kind} {t.name!r}: axis {axis} is fixed to {w} in the model but dims say {d}")
        if batching and spec.shape and spec.shape[0] is not None:
            problems.append(
                f"{kind} {t.name!r}: the model's batch axis is fixed to {spec.shape[0]}; it must be dynamic to batch"
            )


def _check_interface(model: ModelInterface, problems: list[str]) -> None:
    names = [t.name for t in model.inputs]
    for t in model.inputs:
        if t.name not in INPUT_NAMES:
            problems.append(f"model input {t.name!r} is not one of {', '.join(INPUT_NAMES)}")
        if t.dtype != INPUT_DTYPE:
            problems.append(f"model input {t.name!r} is {t.dtype}, the interface needs {INPUT_DTYPE} (TYPE_INT64)")
        if len(t.shape) != 2:
            problems.append(f"model input {t.name!r} has rank {len(t.shape)}, the interface needs [batch, sequence]")
    if INPUT_NAMES[0] not in names:
        problems.append(f"model has no {INPUT_NAMES[0]!r} input")
    out = model.tensor(OUTPUT_NAME)
    if out is None or out not in model.outputs:
        problems.append(f"model has no {OUTPUT_NAME!r} output")
    else:
        if out.dtype != OUTPUT_DTYPE:
            problems.append(f"model output {OUTPUT_NAME!r} is {out.dtype}, the interface needs {OUTPUT_DTYPE} (TYPE_FP32)")
        if len(out.shape) != 2:
            problems.append(f"model output {OUTPUT_NAME!r} has rank {len(out.shape)}, the interface needs [batch, labels]")
    if model.seq_len is not None:
        for t in model.inputs:
            if len(t.shape) == 2 and t.shape[1] is not None and t.shape[1] != model.seq_len:
                problems.append(
                    f"model input {t.name!r} has fixed sequence {t.shape[1]} but metadata prumux.seq_len={model.seq_len}"
                )


def _common(cfg, model: ModelInterface, num_instances: int | None, problems: list[str]) -> int | None:
    _check_interface(model, problems)
    n = _resolve_n(cfg, num_instances, model.num_instances, problems)
    _check_batching(cfg, n, problems)
    batching = cfg.max_batch_size > 0
    _check_tensors("input", cfg.input, model.inputs, batching, problems)
    _check_tensors("output", cfg.output, model.outputs, batching, problems)
    return n


def validate_config(config, onnx_path: "str | Path | ModelInterface", *, num_instances: int | None = None) -> list[str]:
    """Problems of a Triton config for an ONNX model (``onnxruntime_onnx`` platform, ``python`` backend, or the
    ``openvino`` backend serving an IR made from that ONNX graph).

    Args:
        config: path to ``config.pbtxt`` or a ``ModelConfig`` message.
        onnx_path: the ONNX model the config serves (or its already-read :class:`ModelInterface`).
        num_instances: N; when None, taken from the config parameter ``prumux.num_instances``, else
            from the ONNX metadata ``prumux.num_instances``.

    Returns:
        One-line problem descriptions; empty when the config is valid. A config that does not
        parse yields a single problem.

    Raises:
        InputError: the ONNX file is missing or unreadable.
    """
    model = onnx_path if isinstance(onnx_path, ModelInterface) else read_onnx_interface(onnx_path)
    cfg, problems = _load(config)
    if cfg is None:
        return problems
    if cfg.backend in ("python", "openvino"):
        if cfg.platform:
            problems.append(f"backend {cfg.backend!r} must not set platform (got {cfg.platform!r})")
        if cfg.backend == "openvino":
            from prumux_compile.triton.config import OPENVINO_PARAMETERS

            for key in config_parameters(cfg):
                if not key.startswith("prumux.") and key not in OPENVINO_PARAMETERS:
                    problems.append(f"parameter {key!r} is not an openvino backend parameter "
                                    f"({', '.join(OPENVINO_PARAMETERS)})")
            if cfg.default_model_filename and not cfg.default_model_filename.endswith(".xml"):
                problems.append(f"default_model_filename {cfg.default_model_filename!r}: the IR is model.xml")
    elif not (
        (cfg.platform == "onnxruntime_onnx" and cfg.backend in ("", "onnxruntime"))
        or (cfg.platform == "" and cfg.backend == "onnxruntime")
    ):
        problems.append(
            f"an ONNX model needs platform 'onnxruntime_onnx' (backend 'onnxruntime'), backend 'python' or (its "
            f"IR) backend 'openvino'; "
            f"got platform {cfg.platform!r}, backend {cfg.backend!r}"
        )
    _common(cfg, model, num_instances, problems)
    return problems


def _profile_problems(
    cfg, inputs: Sequence[TensorSpec], profiles: Sequence[Profile], n: int | None, problems: list[str]
) -> None:
    if not profiles:
        problems.append("the plan has no optimization profile")
        return
    by_name = {t.name: t for t in inputs}
    max_batches: set[int] = set()
    for p, profile in enumerate(profiles):
        missing = [name for name in by_name if name not in profile]
        if missing:
            problems.append(f"profile {p}: no shapes for input(s) {', '.join(missing)}")
        for name, shapes in profile.items():
            spec = by_name.get(name)
            if spec is None:
                problems.append(f"profile {p}: {name!r} is not a plan input")
                continue
            try:
                lo, opt, hi = (tuple(int(d) for d in s) for s in shapes)
            except (TypeError, ValueError):
                problems.append(f"profile {p} input {name!r}: shapes must be (min, opt, max) integer tuples")
                continue
            if not (len(lo) == len(opt) == len(hi) == len(spec.shape)):
                problems.append(f"profile {p} input {name!r}: shapes {lo}/{opt}/{hi} do not have rank {len(spec.shape)}")
                continue
            for axis, (a, b, c, fixed) in enumerate(zip(lo, opt, hi, spec.shape)):
                if not 1 <= a <= b <= c:
                    problems.append(f"profile {p} input {name!r} axis {axis}: need 1 <= min <= opt <= max, got {a}/{b}/{c}")
                if fixed is not None and not a == b == c == fixed:
                    problems.append(f"profile {p} input {name!r} axis {axis} is fixed to {fixed} but the profile says {a}/{b}/{c}")
            if lo[0] != 1:
                problems.append(
                    f"profile {p} input {name!r}: min batch {lo[0]}; every profile must start at batch 1 "
                    f"(Triton may send any batch 1..max_batch_size to any profile)"
                )
            max_batches.add(hi[0])
    if len(max_batches) > 1:
        problems.append(f"profiles disagree on the max batch {sorted(max_batches)}; all profiles must share one max")
    elif len(max_batches) == 1:
        (pmax,) = max_batches
        if cfg.max_batch_size != pmax:
            problems.append(f"max_batch_size={cfg.max_batch_size} differs from the plan profiles' max batch {pmax}")
        if n is not None and pmax % n:
            problems.append(f"the plan profiles' max batch {pmax} is not a multiple of num_instances={n}")


def validate_plan_config(
    config,
    *,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    profiles: Sequence[Profile],
    num_instances: int | None = None,
) -> list[str]:
    """Problems of a Triton config for a TensorRT plan (``tensorrt_plan`` platform).

    Args:
        config: path to ``config.pbtxt`` or a ``ModelConfig`` message.
        inputs / outputs: the plan's I/O bindings, full shapes with the batch axis, ``None``/-1 = dynamic.
        profiles: the plan's optimization profiles, each ``{input: (min, opt, max)}`` full shapes.
        num_instances: N; when None, from the config parameter ``prumux.num_instances``.

    Returns:
        One-line problem descriptions; empty when valid.
    """
    cfg, problems = _load(config)
    if cfg is None:
        return problems
    if not (
        (cfg.platform == "tensorrt_plan" and cfg.backend in ("", "tensorrt"))
        or (cfg.platform == "" and cfg.backend == "tensorrt")
    ):
        problems.append(
            f"a TensorRT plan needs platform 'tensorrt_plan'; got platform {cfg.platform!r}, backend {cfg.backend!r}"
        )
    model = ModelInterface(inputs=tuple(inputs), outputs=tuple(outputs))
    n = _common(cfg, model, num_instances, problems)
    _profile_problems(cfg, model.inputs, profiles, n, problems)
    return problems


def raise_problems(problems: Sequence[str], what: str) -> None:
    """Raise :class:`TritonConfigError` (exit 6) with every problem on one line; no-op when empty."""
    _raise(list(problems), what)


def _raise(problems: list[str], what: str) -> None:
    if problems:
        more = f" (+{len(problems) - 1} more: {'; '.join(problems[1:])})" if len(problems) > 1 else ""
        raise TritonConfigError(f"invalid Triton config for {what}: {problems[0]}{more}")


def check_or_raise(config, onnx_path: "str | Path | ModelInterface", *, num_instances: int | None = None) -> None:
    """:func:`validate_config`, raising on the first problem.

    Raises:
        TritonConfigError: (exit code 6) one line listing every problem.
        InputError: the ONNX file is missing or unreadable.
    """
    what = "the ONNX model" if isinstance(onnx_path, ModelInterface) else str(onnx_path)
    _raise(validate_config(config, onnx_path, num_instances=num_instances), what)


def check_plan_or_raise(
    config,
    *,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    profiles: Sequence[Profile],
    num_instances: int | None = None,
) -> None:
    """:func:`validate_plan_config`, raising when there is any problem.

    Raises:
        TritonConfigError: (exit code 6) one line listing every problem.
    """
    _raise(
        validate_plan_config(config, inputs=inputs, outputs=outputs, profiles=profiles, num_instances=num_instances),
        "the TensorRT plan",
    )


__all__ = [
    "Profile",
    "check_or_raise",
    "check_plan_or_raise",
    "raise_problems",
    "validate_config",
    "validate_plan_config",
]
