"""Build, print and parse Triton ``config.pbtxt`` files as ``ModelConfig`` protobuf messages.

The text is always produced by ``google.protobuf.text_format`` from
``tritonclient.grpc.model_config_pb2.ModelConfig`` (Triton's ``model_config.proto``), never from a
string template, so every written file parses back into the same message.

Batching rules for multiplexed models (docs/field-faults.md F12, F14):
``max_batch_size`` and every ``preferred_batch_size`` are multiples of N = num_instances, because a
batch that is a multiple of N fills every mux group; ``dims`` never contain the batch axis.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from prumux_compile.errors import InputError, TritonConfigError
from prumux_compile.triton.interface import TensorSpec

#: Platforms this writer emits, and the Triton backend that serves each natively. ``openvino`` (an OpenVINO IR,
#: ``model.xml`` + ``model.bin``) has no Triton platform string: its config names only ``backend: "openvino"``.
PLATFORM_BACKENDS: dict[str, str] = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt",
                                     "openvino": "openvino"}
#: Backends this writer emits. ``python`` serves the ONNX file with onnxruntime inside Triton's Python backend.
BACKENDS: tuple[str, ...] = ("onnxruntime", "tensorrt", "python", "openvino")
#: Parameters of Triton's openvino backend this writer may set (triton-inference-server/openvino_backend, README
#: "Parameters"; anything else is refused by that backend's parameter parser).
OPENVINO_PARAMETERS: tuple[str, ...] = ("PERFORMANCE_HINT", "INFERENCE_NUM_THREADS", "COMPILATION_NUM_THREADS",
                                        "HINT_BF16", "NUM_STREAMS", "SKIP_OV_DYNAMIC_BATCHSIZE",
                                        "ENABLE_BATCH_PADDING", "RESHAPE_IO_LAYERS")
#: Instance kinds accepted for ``instance_group.kind``.
INSTANCE_KINDS: tuple[str, ...] = ("KIND_CPU", "KIND_GPU", "KIND_AUTO")
#: ``parameters`` keys this project writes into the config (read back by the validator and model.py).
PARAM_NUM_INSTANCES = "prumux.num_instances"
PARAM_ISOLATE = "prumux.isolate_requests"
PARAM_INTRA_OP_THREADS = "prumux.intra_op_num_threads"
#: Longest sequence (tokens) the model accepts: the compiled length of a multiplexed model, else the position table
#: (ONNX metadata ``prumux.max_seq_len``). Triton's ``dims`` cannot bound a variable (-1) axis, so the bound is a
#: parameter: the Python-backend ``model.py`` refuses longer requests, and a comment in ``config.pbtxt`` says it.
PARAM_MAX_SEQ_LEN = "prumux.max_seq_len"
PARAM_INTER_OP_THREADS = "prumux.inter_op_num_threads"
PARAM_GRAPH_LEVEL = "prumux.graph_optimization_level"
#: ONNX Runtime session graph levels by name -> Triton onnxruntime backend ``optimization.graph.level``
#: (its encoding: -1 basic, 1 basic + extended, 2 all disabled; unset = everything enabled).
ORT_GRAPH_LEVELS: dict[str, int | None] = {"disable_all": 2, "basic": -1, "extended": 1, "all": None}

#: Default ``max_batch_size`` is this many mux groups (8·N), when neither the caller nor the model says.
DEFAULT_GROUPS = 8


def model_config_pb2():
    """The ``model_config_pb2`` module of tritonclient (imported lazily; it needs protobuf 6.x).

    Raises:
        InputError: tritonclient[grpc] is not installed (install the ``triton`` extra).
    """
    try:
        from tritonclient.grpc import model_config_pb2 as pb2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputError(f"tritonclient[grpc] is required for Triton configs (pip install '.[triton]'): {exc}") from exc
    return pb2


def default_max_batch_size(num_instances: int, model_max_batch: int | None = None) -> int:
    """Default ``max_batch_size``: the model's ``prumux.max_batch`` rounded DOWN to a multiple of N,
    else ``8·N``.

    Args:
        num_instances: N ≥ 1.
        model_max_batch: ``prumux.max_batch`` from the ONNX metadata, or None.

    Raises:
        TritonConfigError: ``model_max_batch`` < N (no multiple of N fits).
    """
    if num_instances < 1:
        raise TritonConfigError(f"num_instances must be >= 1, got {num_instances}")
    if model_max_batch is None:
        return DEFAULT_GROUPS * num_instances
    rounded = (model_max_batch // num_instances) * num_instances
    if rounded < num_instances:
        raise TritonConfigError(
            f"model metadata prumux.max_batch={model_max_batch} is smaller than num_instances={num_instances}"
        )
    return rounded


def default_preferred_batch_sizes(num_instances: int, max_batch_size: int) -> list[int]:
    """Default ``dynamic_batching.preferred_batch_size``: N·2^k for k = 0, 1, ... up to
    ``max_batch_size``, plus ``max_batch_size`` itself when it is a multiple of N.

    Example: N=2, max 16 -> [2, 4, 8, 16]; N=3, max 18 -> [3, 6, 12, 18].
    """
    sizes: list[int] = []
    k = num_instances
    while 0 < k <= max_batch_size:
        sizes.append(k)
        k *= 2
    if max_batch_size % num_instances == 0 and max_batch_size >= num_instances and max_batch_size not in sizes:
        sizes.append(max_batch_size)
    return sizes


def _fill_tensor(msg, spec: TensorSpec, pb2, batching: bool = True) -> None:
    msg.name = spec.name
    msg.data_type = pb2.DataType.Value(spec.triton_dtype)
    msg.dims.extend(spec.triton_dims if batching else tuple(-1 if d is None else int(d) for d in spec.shape))


def build_model_config(
    *,
    name: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    num_instances: int,
    max_batch_size: int,
    preferred_batch_sizes: Sequence[int],
    platform: str = "onnxruntime_onnx",
    backend: str = "onnxruntime",
    instance_count: int = 1,
    instance_kind: str = "KIND_CPU",
    max_queue_delay_us: int = 100,
    isolate_requests: bool = True,
    intra_op_num_threads: int | None = None,
    default_model_filename: str | None = None,
    max_seq_len: int | None = None,
    graph_optimization_level: str | None = None,
    inter_op_num_threads: int | None = None,
    gpu_accelerators: Sequence[Mapping] = (),
    backend_parameters: Mapping[str, str] | None = None,
):
    """Assemble a ``ModelConfig`` message (no validation; see :mod:`prumux_compile.triton.validate`).

    Args:
        name: Triton model name (the model directory's name).
        inputs / outputs: tensors with full shapes (batch axis first); ``dims`` are written without it.
        num_instances: N; stored as parameter ``prumux.num_instances``.
        max_batch_size: Triton ``max_batch_size`` (rows per batch).
        preferred_batch_sizes: ``dynamic_batching.preferred_batch_size`` values.
        platform: ``onnxruntime_onnx`` or ``tensorrt_plan``; not written for the ``python`` backend.
        backend: ``onnxruntime``, ``tensorrt`` or ``python``.
        instance_count / instance_kind: one ``instance_group``.
        max_queue_delay_us: dynamic batcher queue delay, microseconds.
        isolate_requests: python backend only (parameter ``prumux.isolate_requests``): requests whose
            batch is not a multiple of N run alone, so no request shares a mux group with another.
        intra_op_num_threads / inter_op_num_threads: onnxruntime thread pools of the measured session (None: ORT
            default); native backend: parameters ``intra_op_thread_count`` / ``inter_op_thread_count``, python
            backend: ``prumux.intra_op_num_threads`` / ``prumux.inter_op_num_threads``.
        default_model_filename: written when given.
        max_seq_len: longest accepted sequence in tokens (ONNX metadata ``prumux.max_seq_len``), written as
            parameter :data:`PARAM_MAX_SEQ_LEN` when given.
        graph_optimization_level: onnxruntime session graph level of the measured session (a key of
            :data:`ORT_GRAPH_LEVELS`; ``"disable_all"`` for a graph saved after optimisation); native backend:
            ``optimization.graph.level``, python backend: parameter ``prumux.graph_optimization_level``.
        gpu_accelerators: native onnxruntime backend: ``optimization.execution_accelerators.gpu_execution_accelerator``
            entries ``{"name": ..., "parameters": {...}}`` (e.g. the CUDA provider's ``use_tf32``).
        backend_parameters: openvino backend: its ``parameters`` (names in :data:`OPENVINO_PARAMETERS`). With
            ``max_batch_size`` 0 (what the writer uses for OpenVINO) no ``dynamic_batching`` block is written and
            ``dims`` are the full shapes.

    Returns:
        ``tritonclient.grpc.model_config_pb2.ModelConfig``.

    Raises:
        TritonConfigError: unknown platform/backend/instance kind or a dtype Triton has no type for.
    """
    pb2 = model_config_pb2()
    if backend not in BACKENDS:
        raise TritonConfigError(f"unknown backend {backend!r}; supported: {', '.join(BACKENDS)}")
    if platform not in PLATFORM_BACKENDS:
        raise TritonConfigError(f"unknown platform {platform!r}; supported: {', '.join(PLATFORM_BACKENDS)}")
    if instance_kind not in INSTANCE_KINDS:
        raise TritonConfigError(f"unknown instance kind {instance_kind!r}; supported: {', '.join(INSTANCE_KINDS)}")
    for t in (*inputs, *outputs):
        if t.triton_dtype == "TYPE_INVALID":
            raise TritonConfigError(f"tensor {t.name!r}: dtype {t.dtype} has no Triton data type")

    cfg = pb2.ModelConfig()
    cfg.name = name
    if backend in ("python", "openvino"):
        cfg.backend = backend
    else:
        cfg.platform = platform
        cfg.backend = backend
    if default_model_filename:
        cfg.default_model_filename = default_model_filename
    cfg.max_batch_size = int(max_batch_size)
    batching = int(max_batch_size) > 0
    for spec in inputs:
        _fill_tensor(cfg.input.add(), spec, pb2, batching)
    for spec in outputs:
        _fill_tensor(cfg.output.add(), spec, pb2, batching)
    if batching:
        cfg.dynamic_batching.preferred_batch_size.extend(int(b) for b in preferred_batch_sizes)
        cfg.dynamic_batching.max_queue_delay_microseconds = int(max_queue_delay_us)
    group = cfg.instance_group.add()
    group.count = int(instance_count)
    group.kind = pb2.ModelInstanceGroup.Kind.Value(instance_kind)
    cfg.parameters[PARAM_NUM_INSTANCES].string_value = str(int(num_instances))
    if max_seq_len is not None:
        cfg.parameters[PARAM_MAX_SEQ_LEN].string_value = str(int(max_seq_len))
    if graph_optimization_level is not None and graph_optimization_level not in ORT_GRAPH_LEVELS:
        raise TritonConfigError(f"unknown graph optimization level {graph_optimization_level!r}; supported: "
                                f"{', '.join(ORT_GRAPH_LEVELS)}")
    if backend == "python":
        cfg.parameters[PARAM_ISOLATE].string_value = "true" if isolate_requests else "false"
        if intra_op_num_threads is not None:
            cfg.parameters[PARAM_INTRA_OP_THREADS].string_value = str(int(intra_op_num_threads))
        if inter_op_num_threads is not None:
            cfg.parameters[PARAM_INTER_OP_THREADS].string_value = str(int(inter_op_num_threads))
        if graph_optimization_level is not None:
            cfg.parameters[PARAM_GRAPH_LEVEL].string_value = graph_optimization_level
    elif backend == "onnxruntime":
        if intra_op_num_threads is not None:
            cfg.parameters["intra_op_thread_count"].string_value = str(int(intra_op_num_threads))
        if inter_op_num_threads is not None:
            cfg.parameters["inter_op_thread_count"].string_value = str(int(inter_op_num_threads))
        level = ORT_GRAPH_LEVELS.get(graph_optimization_level) if graph_optimization_level else None
        if level is not None:
            cfg.optimization.graph.level = level
        for acc in gpu_accelerators:
            entry = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add()
            entry.name = str(acc["name"])
            for k, v in (acc.get("parameters") or {}).items():
                entry.parameters[str(k)] = str(v)
    elif backend == "openvino":
        unknown = sorted(set(backend_parameters or {}) - set(OPENVINO_PARAMETERS))
        if unknown:
            raise TritonConfigError(f"openvino backend parameters {unknown} are not among "
                                    f"{', '.join(OPENVINO_PARAMETERS)}")
        for k, v in (backend_parameters or {}).items():
            cfg.parameters[str(k)].string_value = str(v)
    return cfg


def config_to_text(config) -> str:
    """``config.pbtxt`` text of a ``ModelConfig`` (protobuf text format, ends with a newline).

    When the config carries :data:`PARAM_MAX_SEQ_LEN` and an input's sequence axis is variable (-1), ``#`` comment
    lines first say what bounds the sequence length and why ``dims`` cannot (comments are part of the text format,
    so the file parses back into the same message).
    """
    from google.protobuf import text_format

    return sequence_bound_comment(config) + openvino_comment(config) + text_format.MessageToString(config)


def openvino_comment(config) -> str:
    """``#`` lines saying why an openvino config has ``max_batch_size: 0`` ('' for other backends)."""
    if config.backend != "openvino":
        return ""
    return ("# max_batch_size 0: Triton's openvino backend fixes a batching model's batch to max_batch_size and pads\n"
            "# smaller batches (ENABLE_BATCH_PADDING); padding rows would share mux groups with real rows and change\n"
            "# their logits. Without Triton batching each request runs as sent, exactly as measured (any batch; the\n"
            "# graph pads to a multiple of N by repeating the last row). Send batches that are multiples of N.\n")


def sequence_bound_comment(config) -> str:
    """The ``#`` comment lines :func:`config_to_text` puts first ('' when there is nothing to say)."""
    raw = config.parameters[PARAM_MAX_SEQ_LEN].string_value if PARAM_MAX_SEQ_LEN in config.parameters else ""
    if not raw or not any(len(i.dims) >= 1 and i.dims[-1] == -1 for i in config.input):
        return ""
    refusal = ("model.py refuses a longer request with an error naming the limit"
               if config.backend == "python" else
               "the openvino backend passes a longer request to the model, which fails inside OpenVINO"
               if config.backend == "openvino" else
               "the onnxruntime backend passes a longer request to the graph, which fails inside ONNX Runtime")
    return (f"# Sequence axis: dims -1 (any length up to {raw} tokens). Triton's model configuration cannot bound a\n"
            f"# variable dimension, so the limit is parameter {PARAM_MAX_SEQ_LEN} = {raw} (the compiled length of a\n"
            f"# multiplexed model, else the position table): {refusal}.\n"
            f"# Clients truncate to {raw} tokens.\n")


def parse_config_text(text: str, *, source: str = "<text>"):
    """Parse ``config.pbtxt`` text into a ``ModelConfig``.

    Raises:
        TritonConfigError: the text is not a valid ``ModelConfig`` (message names the source and line).
    """
    from google.protobuf import text_format

    pb2 = model_config_pb2()
    try:
        return text_format.Parse(text, pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise TritonConfigError(f"{source}: not a valid Triton ModelConfig: {exc}".splitlines()[0]) from exc


def load_config(config: "str | Path | object"):
    """A ``ModelConfig`` from a ``config.pbtxt`` path, or the message itself when one is passed.

    Raises:
        TritonConfigError: the file is missing or does not parse.
    """
    pb2 = model_config_pb2()
    if isinstance(config, pb2.ModelConfig):
        return config
    path = Path(config)  # type: ignore[arg-type]
    if not path.is_file():
        raise TritonConfigError(f"Triton config not found: {path}")
    return parse_config_text(path.read_text(encoding="utf-8"), source=str(path))


def config_parameters(config) -> Mapping[str, str]:
    """The ``parameters`` map of a ``ModelConfig`` as plain strings."""
    return {k: v.string_value for k, v in config.parameters.items()}
