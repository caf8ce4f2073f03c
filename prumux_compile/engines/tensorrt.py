"""TensorRT engine (``tensorrt`` backend), for machines that have TensorRT; ``import tensorrt`` is lazy.

Build (:func:`build_plan`), through TensorRT's Python API:

1. the graph is ``model.trt.onnx`` or its fp16 form (:mod:`prumux_compile.engines.trt_onnx`), chosen by the
   precision of the :class:`~prumux_compile.engines.base.EngineConfig` (the build driver asks for
   :attr:`TensorRTBackend.default_precision`, fp16); any non-standard op is refused first (field fault F17 in docs/field-faults.md).
   TensorRT >= 10 networks are *strongly typed* (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; the flag is
   always on and deprecated in TensorRT 11): precision is a property of the graph, so no FP16 builder flag is
   ever set;
2. ``OnnxParser.parse_from_file``; parser errors become :class:`TensorRTBuildError`;
3. ``IBuilderConfig``: workspace limit (``set_memory_pool_limit(MemoryPoolType.WORKSPACE, bytes)``),
   ``builder_optimization_level``, a timing cache read from / written back to a file
   (``create_timing_cache`` / ``set_timing_cache`` / ``get_timing_cache().serialize()``);
4. optimization profiles (:func:`compute_profiles`) from the config's shape profile: every profile's batch range
   starts at 1 and all share one maximum (field fault F14 in docs/field-faults.md, triton server#7056), so any batch 1..max runs under
   any profile and the Triton ``max_batch_size`` equals that maximum; one profile per batch size, optimised for it;
5. ``build_serialized_network``; ``None`` (or an exception) becomes :class:`TensorRTBuildError`, exit 4,
   naming the profile the builder log blames (or every profile) and carrying the builder log (field fault F10 in docs/field-faults.md,
   TensorRT#1581).

The artifact is ``model.plan`` and nothing else is ever loaded by :class:`TensorRTRunner`; it is judged by the
criteria of ``("tensorrt", precision)`` (:mod:`prumux_compile.validation`) and deployed as ``tensorrt_plan`` on
``KIND_GPU``.

Running (:class:`TensorRTRunner`, Polygraphy's runner pattern): one process-wide TensorRT logger
(:func:`process_logger`), the runner's own CUDA stream, the return value of every shape / address / profile
setter checked, the output's dtype and shape asked from the engine, PyTorch CUDA tensors as device buffers (no
``pycuda`` / ``cuda-python`` dependency).

Everything that does not need the library (profiles, option checks, error mapping, profile selection at run
time) is plain Python; the ``tensorrt`` module and the device are constructor arguments, so the whole build ->
load -> run path is unit-tested with a stand-in module on the CPU (``tests/unit/test_tensorrt_logic.py``).
Importing this module needs neither ``tensorrt`` nor ``onnx``.
"""
from __future__ import annotations

import importlib.util
import json
import re
import threading
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from prumux_compile.engines.base import (Artifact, Backend, Compiled, Deployment, EngineConfig, Runner, file_sha256,
                                         prepare_feeds)
from prumux_compile.errors import EngineBuildError, InputError
from prumux_compile.export.spec import INPUT_NAMES, OUTPUT_NAME, ExportSpec

__all__ = ["TrtOptions", "Profile", "TensorRTBuildError", "compute_profiles", "select_profile", "build_plan",
           "blamed_profiles", "TensorRTBackend", "TensorRTRunner", "PLAN_FILENAME", "MIN_TRT_MAJOR",
           "process_logger"]

PLAN_FILENAME = "model.plan"
#: Oldest TensorRT major version accepted (the first with STRONGLY_TYPED networks and the v3 I/O API).
MIN_TRT_MAJOR = 10
_PRECISIONS = ("fp32", "fp16")


class TensorRTBuildError(EngineBuildError):
    """A failed TensorRT build (exit 4). ``profiles`` names the profile(s) concerned, ``log`` holds the builder
    log lines (``"[SEVERITY] message"``) for the report (F10 in docs/field-faults.md)."""

    def __init__(self, message: str, *, profiles: list[str] | None = None, log: list[str] | None = None):
        super().__init__(message)
        self.profiles = list(profiles or [])
        self.log = list(log or [])


@dataclass(frozen=True)
class TrtOptions:
    """Options of a TensorRT build.

    Attributes:
        precision: ``"fp32"`` (``model.trt.onnx``) or ``"fp16"`` (``model.trt.fp16.onnx``): which graph is
            built; with strongly typed networks this *is* the engine precision.
        batch_sizes: batch sizes (input rows) to optimise for, one profile each; empty = ``(8·N,)``.
        max_batch: the shared maximum batch of every profile (rows); None = the largest of ``batch_sizes``
            rounded up to a multiple of N.
        seq_len: longest sequence (tokens) the engine accepts and optimises for; None = the model's limit
            (its compiled length for multiplexed models; min(128, position table) for N = 1).
        min_seq: shortest sequence accepted (tokens).
        workspace_mb: builder workspace memory pool limit, MiB.
        optimization_level: ``builder_optimization_level`` 0..5 (TensorRT default 3).
        timing_cache: timing cache file (read when present, written after a build); None = no cache.
    """

    precision: str = "fp16"
    batch_sizes: tuple[int, ...] = ()
    max_batch: int | None = None
    seq_len: int | None = None
    min_seq: int = 1
    workspace_mb: int = 4096
    optimization_level: int = 3
    timing_cache: str | None = None

    @classmethod
    def from_config(cls, config: EngineConfig) -> "TrtOptions":
        """The builder options of an :class:`EngineConfig`: precision and shape profile from its fields,
        ``min_seq``, ``workspace_mb``, ``optimization_level``, ``timing_cache`` from its ``options``."""
        defaults = cls()
        return cls(precision=config.precision, batch_sizes=tuple(int(b) for b in config.batch_sizes),
                   max_batch=config.max_batch, seq_len=config.seq_len,
                   min_seq=int(config.option("min_seq", defaults.min_seq)),
                   workspace_mb=int(config.option("workspace_mb", defaults.workspace_mb)),
                   optimization_level=int(config.option("optimization_level", defaults.optimization_level)),
                   timing_cache=config.option("timing_cache", defaults.timing_cache))

    def check(self) -> None:
        """Raise :class:`InputError` naming the first bad option."""
        if self.precision not in _PRECISIONS:
            raise InputError(f"tensorrt: precision {self.precision!r}: expected one of {', '.join(_PRECISIONS)}")
        for b in self.batch_sizes:
            if not isinstance(b, (int, np.integer)) or int(b) < 1:
                raise InputError(f"tensorrt: batch size {b!r}: must be an integer >= 1")
        if self.max_batch is not None and int(self.max_batch) < 1:
            raise InputError(f"tensorrt: max_batch={self.max_batch}: must be >= 1")
        if self.max_batch is not None and self.batch_sizes and int(self.max_batch) < max(self.batch_sizes):
            raise InputError(f"tensorrt: max_batch={self.max_batch} is below batch size {max(self.batch_sizes)}; "
                             "every profile shares one maximum (F14 in docs/field-faults.md)")
        if self.seq_len is not None and int(self.seq_len) < 1:
            raise InputError(f"tensorrt: seq_len={self.seq_len}: must be >= 1")
        if int(self.min_seq) < 1 or (self.seq_len is not None and int(self.min_seq) > int(self.seq_len)):
            raise InputError(f"tensorrt: min_seq={self.min_seq}: must be in [1, seq_len]")
        if int(self.workspace_mb) < 1:
            raise InputError(f"tensorrt: workspace_mb={self.workspace_mb}: must be >= 1")
        if not 0 <= int(self.optimization_level) <= 5:
            raise InputError(f"tensorrt: optimization_level={self.optimization_level}: must be in 0..5")


@dataclass(frozen=True)
class Profile:
    """One optimization profile: per input name, ``(min, opt, max)`` shapes ``[batch, sequence]``.

    Attributes:
        index: position in the build config (0-based).
        shapes: input name -> ((min_b, min_s), (opt_b, opt_s), (max_b, max_s)).
    """

    index: int
    shapes: dict[str, tuple[tuple[int, int], tuple[int, int], tuple[int, int]]] = field(default_factory=dict)

    @property
    def opt_batch(self) -> int:
        return next(iter(self.shapes.values()))[1][0]

    @property
    def max_batch(self) -> int:
        return next(iter(self.shapes.values()))[2][0]

    def describe(self) -> str:
        """``"profile 0 (min 1x1, opt 16x128, max 64x128)"`` (batch x sequence)."""
        lo, opt, hi = next(iter(self.shapes.values()))
        return (f"profile {self.index} (min {lo[0]}x{lo[1]}, opt {opt[0]}x{opt[1]}, max {hi[0]}x{hi[1]})")


def compute_profiles(batch_sizes, num_instances: int, seq_len: int, *, max_batch: int | None = None,
                     min_seq: int = 1, input_names=INPUT_NAMES) -> list[Profile]:
    """Optimization profiles for the given batch sizes (module docstring, F14 in docs/field-faults.md).

    Every profile has batch range ``1 .. M`` with one shared ``M`` and sequence range ``min_seq .. seq_len``;
    profile i is optimised for ``batch_sizes[i]`` (sorted, deduplicated) and ``seq_len``.

    Args:
        batch_sizes: rows per call to optimise for (each >= 1); empty = ``(8·N,)``.
        num_instances: N (>= 1); the default shared maximum is rounded up to a multiple of N so a full last mux
            group fits.
        seq_len: longest sequence (tokens, >= 1).
        max_batch: shared maximum M (default: max(batch_sizes) rounded up to a multiple of N).
        min_seq: shortest sequence (1 <= min_seq <= seq_len).
        input_names: the engine's inputs (all get the same shapes).

    Returns:
        profiles in ascending order of their opt batch.

    Raises:
        InputError: a batch size < 1, N < 1, ``seq_len`` < 1, ``min_seq`` out of range, or ``max_batch`` below a
            batch size.
    """
    n = int(num_instances)
    if n < 1:
        raise InputError(f"tensorrt: num_instances={num_instances}: must be >= 1")
    if int(seq_len) < 1 or not 1 <= int(min_seq) <= int(seq_len):
        raise InputError(f"tensorrt: sequence range {min_seq}..{seq_len} is empty or starts below 1")
    sizes = sorted({int(b) for b in batch_sizes}) or [8 * n]
    if sizes[0] < 1:
        raise InputError(f"tensorrt: batch size {sizes[0]}: must be >= 1")
    top = int(max_batch) if max_batch is not None else -(-sizes[-1] // n) * n
    if top < sizes[-1]:
        raise InputError(f"tensorrt: max_batch={top} is below batch size {sizes[-1]}; every profile shares one "
                         "maximum (F14 in docs/field-faults.md)")
    s = int(seq_len)
    return [Profile(i, {name: ((1, int(min_seq)), (b, s), (top, s)) for name in input_names})
            for i, b in enumerate(sizes)]


def select_profile(profiles: list[Profile], batch: int) -> int:
    """Index of the profile to run ``batch`` rows with: the smallest opt batch >= ``batch`` (else the largest).

    Raises:
        InputError: ``batch`` outside ``1 .. shared max``.
    """
    if not profiles:
        raise InputError("tensorrt: the engine has no optimization profile")
    top = profiles[0].max_batch
    if not 1 <= int(batch) <= top:
        raise InputError(f"tensorrt: batch {batch} outside the engine's range 1..{top} (rebuild with a larger "
                         "max_batch)")
    fitting = [p for p in profiles if p.opt_batch >= batch]
    return min(fitting, key=lambda p: p.opt_batch).index if fitting else max(profiles, key=lambda p: p.opt_batch).index


_PROFILE_RE = re.compile(r"(?:optimization\s+)?profile\s*(?:index\s*)?[#:=]?\s*(\d+)", re.IGNORECASE)


def blamed_profiles(log: list[str], profiles: list[Profile]) -> list[Profile]:
    """Profiles mentioned ("profile 1", "optimization profile #1", "profile index: 1") in error lines of the
    builder log; every profile when none is named."""
    named = set()
    for line in log:
        if line.startswith(("[ERROR]", "[INTERNAL_ERROR]")):
            named.update(int(m) for m in _PROFILE_RE.findall(line))
    hit = [p for p in profiles if p.index in named]
    return hit or list(profiles)


def _trt_version(trt) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in str(trt.__version__).split(".")[:3])
    except (AttributeError, ValueError):
        return (0,)


class _Lines:
    """The lines the :func:`process_logger` recorded since this object was made (one build's or one runner's)."""

    def __init__(self, logger):
        self.logger = logger
        self.start = logger.count

    @property
    def lines(self) -> list[str]:
        new = self.logger.count - self.start
        return list(self.logger.lines)[-new:] if new > 0 else []


_LOGGERS: dict[int, object] = {}
_LOGGER_LOCK = threading.Lock()


def process_logger(trt):
    """THE ``trt.ILogger`` of this process (one per ``tensorrt`` module; TensorRT expects a single logger shared
    by every builder and runtime). It keeps ``"[SEVERITY] message"`` lines (INFO and above) in ``.lines``."""
    with _LOGGER_LOCK:
        logger = _LOGGERS.get(id(trt))
        if logger is None:
            class _Capture(trt.ILogger):
                def __init__(self):
                    trt.ILogger.__init__(self)
                    self.lines: deque[str] = deque(maxlen=5000)  # bounded: a long-lived process keeps the recent log
                    self.count = 0

                def log(self, severity, msg):  # noqa: D401 - TensorRT callback
                    name = getattr(severity, "name", str(severity)).upper()
                    if "VERBOSE" not in name:
                        self.lines.append(f"[{name.split('.')[-1]}] {msg}")
                        self.count += 1

            logger = _LOGGERS[id(trt)] = _Capture()
        return logger


def _parser_error(err) -> str:
    """One line for a TensorRT ``ParserError`` (``node()`` / ``desc()``), or ``str(err)``."""
    if hasattr(err, "desc"):
        node = err.node() if hasattr(err, "node") else -1
        return (f"node {node}: " if node is not None and node >= 0 else "") + str(err.desc())
    return str(err)


def _error_lines(log: list[str], limit: int = 5) -> str:
    errs = [line for line in log if line.startswith(("[ERROR]", "[INTERNAL_ERROR]"))]
    return " | ".join(errs[-limit:]) or "no error in the builder log"


def build_plan(onnx_path: str | Path, plan_path: str | Path, profiles: list[Profile], options: TrtOptions,
               trt=None) -> dict:
    """Build and serialise a TensorRT engine (module docstring steps 1-5).

    Args:
        onnx_path: a standard-only graph (``model.trt.onnx`` or ``model.trt.fp16.onnx``).
        plan_path: the engine file to write.
        profiles: from :func:`compute_profiles`.
        options: :class:`TrtOptions` (checked here).
        trt: the ``tensorrt`` module (None = ``import tensorrt``); tests pass a fake.

    Returns:
        ``{"plan", "bytes", "tensorrt", "strongly_typed", "profiles" (descriptions), "workspace_mb",
        "optimization_level", "timing_cache", "log" (last 50 lines)}``.

    Raises:
        TensorRTBuildError: the parser rejected the graph, a profile was refused, or the builder failed
            (names the profile(s); ``.log`` holds the builder log).
        EngineBuildError: non-standard ops (F17 in docs/field-faults.md) or TensorRT older than :data:`MIN_TRT_MAJOR`.
        InputError: bad options.
    """
    from prumux_compile.engines.trt_onnx import check_standard_ops

    options.check()
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    check_standard_ops(onnx_path)
    if trt is None:
        import tensorrt as trt  # lazily: most machines have no TensorRT
    version = _trt_version(trt)
    if version[0] < MIN_TRT_MAJOR:
        raise EngineBuildError(f"tensorrt {trt.__version__} is too old: strongly typed networks need TensorRT >= "
                               f"{MIN_TRT_MAJOR}")
    logger = _Lines(process_logger(trt))
    names = [p.describe() for p in profiles]
    try:
        builder = trt.Builder(logger.logger)
        flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        network = builder.create_network(0 if flag is None else 1 << int(flag))
        parser = trt.OnnxParser(network, logger.logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
            raise TensorRTBuildError(f"TensorRT ONNX parser rejected {onnx_path.name}: "
                                     + (" | ".join(errors[:5]) or _error_lines(logger.lines)),
                                     profiles=[], log=logger.lines + [f"[PARSER] {e}" for e in errors])
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mb) << 20)
        config.builder_optimization_level = int(options.optimization_level)
        cache_path = Path(options.timing_cache) if options.timing_cache else None
        if cache_path is not None:
            blob = cache_path.read_bytes() if cache_path.is_file() else b""
            config.set_timing_cache(config.create_timing_cache(blob), False)
        inputs = [network.get_input(i).name for i in range(network.num_inputs)]
        for prof in profiles:
            missing = sorted(set(inputs) - set(prof.shapes))
            if missing:
                raise TensorRTBuildError(f"{prof.describe()} has no shapes for network input(s) {missing}",
                                         profiles=[prof.describe()], log=logger.lines)
            opt_profile = builder.create_optimization_profile()
            for name in inputs:
                lo, opt, hi = prof.shapes[name]
                opt_profile.set_shape(name, lo, opt, hi)
            if config.add_optimization_profile(opt_profile) < 0:
                raise TensorRTBuildError(f"TensorRT refused {prof.describe()}: {_error_lines(logger.lines)}",
                                         profiles=[prof.describe()], log=logger.lines)
        plan = builder.build_serialized_network(network, config)
    except TensorRTBuildError:
        raise
    except Exception as exc:  # TensorRT raises RuntimeError / TypeError from its bindings
        blamed = [p.describe() for p in blamed_profiles(logger.lines, profiles)]
        raise TensorRTBuildError(f"TensorRT build of {onnx_path.name} raised {type(exc).__name__}: "
                                 f"{str(exc).strip()[:200]}; profiles: {'; '.join(blamed)}",
                                 profiles=blamed, log=logger.lines) from None
    if plan is None:
        blamed = [p.describe() for p in blamed_profiles(logger.lines, profiles)]
        raise TensorRTBuildError(f"TensorRT build of {onnx_path.name} failed for {'; '.join(blamed)}: "
                                 f"{_error_lines(logger.lines)}", profiles=blamed, log=logger.lines)
    data = bytes(plan)
    plan_path.write_bytes(data)
    if cache_path is not None:
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"plan": str(plan_path), "bytes": len(data), "tensorrt": str(trt.__version__),
            "strongly_typed": flag is not None or version[0] >= 11, "profiles": names,
            "workspace_mb": int(options.workspace_mb), "optimization_level": int(options.optimization_level),
            "timing_cache": str(cache_path) if cache_path else None, "log": logger.lines[-50:]}


def _default_seq(spec: ExportSpec) -> int:
    return spec.max_seq_len if spec.muxed else min(128, spec.max_seq_len)


def _torch_dtype(trt, torch, dtype):
    """torch dtype of a TensorRT ``DataType`` (through ``trt.nptype``)."""
    np_type = np.dtype(trt.nptype(dtype))
    table = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16,
             np.dtype(np.int64): torch.int64, np.dtype(np.int32): torch.int32, np.dtype(np.int8): torch.int8,
             np.dtype(np.bool_): torch.bool}
    if np_type not in table:
        raise EngineBuildError(f"tensorrt: unsupported tensor dtype {np_type}")
    return table[np_type]


class TensorRTRunner(Runner):
    """Runs a serialised engine (``model.plan``) with torch tensors as buffers (module docstring).

    Args:
        plan_path: the engine file (the only file this runner reads).
        spec: the model interface.
        profiles: the profiles it was built with (profile choice per call: :func:`select_profile`).
        trt: the ``tensorrt`` module (None = ``import tensorrt``).
        device: torch device of the buffers (``"cuda"``; ``"cpu"`` only with a stand-in ``trt`` in tests).

    Raises:
        EngineBuildError: the engine cannot be deserialised, or it lacks the model's inputs / ``logits``.
    """

    def __init__(self, plan_path: str | Path, spec: ExportSpec, profiles: list[Profile], *, trt=None,
                 device: str = "cuda"):
        import torch

        if trt is None:
            import tensorrt as trt
        self.spec = spec
        self.profiles = profiles
        self.path = Path(plan_path)
        self._trt, self._torch = trt, torch
        self.device = torch.device(device)
        self._log = _Lines(process_logger(trt))
        self._runtime = trt.Runtime(self._log.logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise EngineBuildError(f"TensorRT cannot deserialise {self.path.name}: {_error_lines(self._log.lines)}")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise EngineBuildError(f"TensorRT cannot create an execution context for {self.path.name}")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        missing = sorted((set(spec.input_names) - set(self._inputs)) | ({OUTPUT_NAME} - set(names)))
        if missing:
            raise EngineBuildError(f"{self.path.name}: the engine lacks tensor(s) {missing}")
        self._out_dtype = _torch_dtype(trt, torch, self._engine.get_tensor_dtype(OUTPUT_NAME))
        self._stream = torch.cuda.Stream(device=self.device) if self.device.type == "cuda" else None
        self._profile = -1

    def _handle(self) -> int:
        return self._stream.cuda_stream if self._stream is not None else 0

    def _ok(self, result, what: str) -> None:
        if result is False or result is None:
            raise EngineBuildError(f"TensorRT refused {what}: {_error_lines(self._log.lines)}")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """See :meth:`Runner.run`. Raises :class:`InputError` for a batch outside the profiles' range."""
        if self._context is None:
            raise InputError("tensorrt runner is closed")
        torch = self._torch
        checked = prepare_feeds(feeds, self.spec)
        b = checked["input_ids"].shape[0]
        idx = select_profile(self.profiles, b)
        ctx = self._context
        stream_ctx = torch.cuda.stream(self._stream) if self._stream is not None else _nullcontext()
        with stream_ctx:
            if idx != self._profile:
                self._ok(ctx.set_optimization_profile_async(idx, self._handle()), f"optimization profile {idx}")
                self._profile = idx
            keep = []
            for name in self._inputs:
                t = torch.from_numpy(checked[name]).to(self.device, non_blocking=True)
                keep.append(t)
                self._ok(ctx.set_input_shape(name, tuple(t.shape)), f"input shape {name}{list(t.shape)}")
                self._ok(ctx.set_tensor_address(name, t.data_ptr()), f"the address of {name}")
            shape = tuple(int(d) for d in ctx.get_tensor_shape(OUTPUT_NAME))
            if any(d < 0 for d in shape) or shape != (b, self.spec.num_labels):
                raise EngineBuildError(f"TensorRT output {OUTPUT_NAME} has shape {list(shape)}, expected "
                                       f"[{b}, {self.spec.num_labels}]")
            out = torch.empty(shape, dtype=self._out_dtype, device=self.device)
            self._ok(ctx.set_tensor_address(OUTPUT_NAME, out.data_ptr()), f"the address of {OUTPUT_NAME}")
            self._ok(ctx.execute_async_v3(self._handle()), "execute_async_v3")
            host = out.float().to("cpu", non_blocking=False)
        if self._stream is not None:
            self._stream.synchronize()
        del keep
        return {OUTPUT_NAME: host.numpy()}

    def close(self) -> None:
        self._context = None
        self._engine = None
        self._stream = None


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


class TensorRTBackend(Backend):
    """``tensorrt``: the module docstring's build.

    Options (``EngineConfig.options``): ``min_seq``, ``workspace_mb``, ``optimization_level``, ``timing_cache``
    (:class:`TrtOptions`). Precision and shape profile come from the config's fields.

    Args:
        trt: the ``tensorrt`` module (None = imported when needed); tests pass a stand-in.
        device: where engines run (``"cuda"``; ``"cpu"`` only with a stand-in module).
    """

    name = "tensorrt"
    precisions = _PRECISIONS
    default_precision = "fp16"
    option_names = ("min_seq", "workspace_mb", "optimization_level", "timing_cache")

    def __init__(self, trt=None, device: str = "cuda"):
        self._trt = trt
        self.device = device

    def eager_device(self) -> str:
        return self.device

    def available(self) -> tuple[bool, str]:
        if self._trt is not None:
            trt = self._trt
        else:
            if importlib.util.find_spec("tensorrt") is None:
                return False, ("Python package 'tensorrt' is not installed (its wheels download the libraries from "
                               "NVIDIA's index at install time)")
            try:
                import torch

                if not torch.cuda.is_available():
                    return False, "no CUDA device (torch.cuda.is_available() is False)"
            except ImportError:
                return False, "Python package 'torch' is not installed (the runner uses torch CUDA buffers)"
            import tensorrt as trt
        if _trt_version(trt)[0] < MIN_TRT_MAJOR:
            return False, f"tensorrt {trt.__version__} < {MIN_TRT_MAJOR} (no strongly typed networks)"
        return True, f"tensorrt {trt.__version__} (strongly typed) on {self.device}"

    def build(self, compiled: Compiled | str | Path, config: EngineConfig | None = None) -> Artifact:
        """``model.onnx`` -> ``model.trt.onnx`` [-> fp16 form] -> ``model.plan`` (the artifact).

        Raises:
            EngineBuildError / TensorRTBuildError: unavailable, unsupported precision, F17 in docs/field-faults.md, or a failed build
                (exit 4).
            InputError: bad options, or a sequence length beyond the model's limit.
        """
        from prumux_compile.engines.trt_onnx import (TRT_FILENAME, TRT_FP16_FILENAME, write_trt_onnx,
                                                     write_trt_onnx_fp16)

        compiled, config, out_dir = self._start_build(compiled, config)
        options = TrtOptions.from_config(config)
        options.check()
        xspec, onnx_path = compiled.spec, Path(compiled.onnx_path)
        files = {"plain": onnx_path}
        graphs = {"fp32": write_trt_onnx(onnx_path, out_dir / TRT_FILENAME)}
        files["trt"] = Path(graphs["fp32"]["path"])
        if options.precision == "fp16":
            graphs["fp16"] = write_trt_onnx_fp16(files["trt"], out_dir / TRT_FP16_FILENAME)
            files["trt-fp16"] = Path(graphs["fp16"]["path"])
        source = files["trt-fp16" if options.precision == "fp16" else "trt"]
        seq = int(options.seq_len or _default_seq(xspec))
        if seq > xspec.max_seq_len:
            raise InputError(f"tensorrt: seq_len={seq} exceeds the model's limit {xspec.max_seq_len}")
        profiles = compute_profiles(options.batch_sizes, xspec.num_instances, seq, max_batch=options.max_batch,
                                    min_seq=min(options.min_seq, seq), input_names=xspec.input_names)
        plan = out_dir / PLAN_FILENAME
        built = build_plan(source, plan, profiles, options, trt=self._trt)
        files["plan"] = plan
        report = {"backend": self.name, "options": asdict(options), "graphs": graphs, "build": built,
                  "source": source.name,
                  "profiles": [{"index": p.index, "shapes": {k: [list(s) for s in v] for k, v in p.shapes.items()}}
                               for p in profiles]}
        (out_dir / "tensorrt.json").write_text(json.dumps(report, indent=1, default=str))
        io = {"inputs": [[name, "int64", [None, None]] for name in xspec.input_names],
              "outputs": [[OUTPUT_NAME, "float32", [None, xspec.num_labels]]],
              "profiles": [{k: [list(x) for x in v] for k, v in p.shapes.items()} for p in profiles]}
        deployment = Deployment(platform="tensorrt_plan", instance_kind="KIND_GPU", model_file=PLAN_FILENAME, plan=io)
        return Artifact(backend=self.name, path=plan, files=files, spec=xspec, precision=options.precision,
                        deployment=deployment, device=self.device, report=report, runnable=("plan",),
                        sha256=file_sha256(plan))

    def load(self, artifact: Artifact) -> TensorRTRunner:
        """A :class:`TensorRTRunner` for the artifact's plan (the only file it reads).

        Raises:
            InputError: an artifact of another backend, or one whose path is not its plan.
        """
        self._check_artifact(artifact)
        if artifact.role != "plan":
            raise InputError(f"tensorrt loads only its plan artifact, not {artifact.path.name} ({artifact.role})")
        profiles = [Profile(p["index"], {k: tuple(tuple(s) for s in v) for k, v in p["shapes"].items()})
                    for p in artifact.report["profiles"]]
        return TensorRTRunner(artifact.path, artifact.spec, profiles, trt=self._trt, device=artifact.device)
