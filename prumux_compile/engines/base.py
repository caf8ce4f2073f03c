"""The engine contract: ``Backend.build(compiled, config) -> Artifact``,
``Backend.load(artifact) -> Runner``, ``Runner.run(feeds) -> outputs``.

* :class:`Compiled` is what every backend builds from: the IR after the pass pipeline, the exported
  ``model.onnx`` and its interface (:class:`~prumux_compile.export.spec.ExportSpec`).
* :class:`EngineConfig` says how: the precision (fp32 / fp16 / bf16 / int8 where the backend supports it), the
  shape profile (batch sizes to optimise for, shared maximum batch, longest sequence), threads, where the files
  go, the build-time measurement, and backend-specific ``options`` (each backend lists the names it accepts).
* :class:`Artifact` says what came out: the file that is measured and deployed (``path``, with its sha256), every
  file produced, the precision, the :class:`~prumux_compile.validation.Criteria` it is judged by, the device it
  runs on, and the :class:`Deployment` that reproduces the measured configuration in a Triton model repository
  (platform, instance kind, session settings).

A new backend is one module with a :class:`Backend` subclass plus one line in
:mod:`prumux_compile.engines.registry`; the build driver treats every backend alike.

Runners are context managers (Polygraphy's idea): ``with backend.load(artifact) as runner: runner.run(feeds)``.
Input checking shared by every backend lives in :func:`prepare_feeds`: it refuses a sequence longer than the
model accepts with :class:`~prumux_compile.errors.InputError` *before* any backend code runs, fills the
optional inputs, and never writes the caller's arrays (field fault F18 in docs/field-faults.md).

Nothing here imports ``onnx``: a backend that does not need it (the CUDA runtime, a TensorRT runner) imports
without it.
"""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from prumux_compile.errors import EngineBuildError, InputError
from prumux_compile.export.spec import ExportSpec
from prumux_compile.validation import Criteria, criteria_for

__all__ = ["PRECISIONS", "Compiled", "EngineConfig", "Deployment", "Artifact", "Runner", "Backend",
           "prepare_feeds", "file_sha256", "artifact_file_hashes", "artifact_files_problem"]

#: Every precision an :class:`EngineConfig` may ask for; each backend supports a subset (``Backend.precisions``).
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def artifact_file_hashes(path: str | Path, sha256: str | None = None) -> dict[str, str]:
    """Hex sha256 of every file an artifact consists of: ``path`` itself, for an OpenVINO IR (``.xml``) its weights
    (``.bin`` beside it), and for an ONNX graph the external-data files it refers to (``model.optimized.onnx.data`` of a model past the 2 GiB protobuf limit, field fault F26 in docs/field-faults.md).

    Args:
        path: the artifact file.
        sha256: its hash when already known (not read again).

    Returns:
        name relative to ``path``'s folder (POSIX form) -> hex sha256, ``path``'s name first.

    Raises:
        InputError: an external-data file is missing or lies outside the folder (from
            :func:`prumux_compile.export.onnx_export.onnx_data_files`).
    """
    path = Path(path)
    out = {path.name: sha256 or file_sha256(path)}
    if path.suffix == ".xml" and path.with_suffix(".bin").is_file():  # an OpenVINO IR: its weights file
        out[path.with_suffix(".bin").name] = file_sha256(path.with_suffix(".bin"))
    if path.suffix == ".onnx":
        from prumux_compile.export.onnx_export import onnx_data_files  # needs onnx: ONNX artifacts only

        for f in onnx_data_files(path):
            out[f.relative_to(path.parent).as_posix()] = file_sha256(f)
    return out


def artifact_files_problem(folder: str | Path, record: dict) -> str | None:
    """Why the files of an artifact record (``candidate.json``'s ``"artifact"``) in ``folder`` are not the files
    that were validated and measured, or None when they are.

    Checks ``path`` against ``sha256`` and every entry of ``files_sha256`` (the external-data files; records written
    before that field existed carry ``sha256`` only, which is then all that is checked).

    Returns:
        a phrase such as ``"model.optimized.onnx.data: sha256 3f2a9c01d4e7... is not the recorded 9b1c...``
        ``(the file changed after it was measured)"``, ``"model.plan is missing"``, or None.
    """
    folder = Path(folder)
    name, want = record.get("path"), record.get("sha256")
    expected = dict(record.get("files_sha256") or {})
    if want:
        expected[name] = want
    if name not in expected:
        expected[name] = None
    for rel, digest in expected.items():
        if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts:
            return f"the record names {rel!r}, not a file inside {folder}"
        f = folder / rel
        if not f.is_file():
            return f"{rel} is missing"
        if digest:
            found = file_sha256(f)
            if found != digest:
                return (f"{rel}: sha256 {found[:12]}... is not the recorded {digest[:12]}... (the file changed after "
                        "it was measured)")
    return None


@dataclass(frozen=True)
class Compiled:
    """The compiled model every backend builds from.

    Attributes:
        onnx_path: the exported ``model.onnx`` (standard ONNX ops, ``prumux.*`` metadata).
        spec: its interface.
        ir: the IR after the pass pipeline (what ``model.onnx`` was exported from); None when only the ONNX file
            is known (backends that need the IR then refuse with :class:`EngineBuildError`).
    """

    onnx_path: Path
    spec: ExportSpec
    ir: Any = None

    @classmethod
    def from_onnx(cls, onnx_path: str | Path, ir=None) -> "Compiled":
        """A :class:`Compiled` whose interface is read from the ONNX file's metadata (needs ``onnx``).

        Raises:
            InputError: not an ONNX file exported by prumux-compile.
        """
        from prumux_compile.export.onnx_export import read_metadata

        path = Path(onnx_path)
        return cls(path, ExportSpec.from_metadata(read_metadata(path)), ir)


@dataclass(frozen=True)
class EngineConfig:
    """How to build an engine (every field a backend does not use is ignored by it).

    Attributes:
        precision: one of :data:`PRECISIONS`; the backend refuses one it does not support.
        batch_sizes: shape profile: batch sizes (input rows) to optimise for, ascending after dedup; empty = 8·N.
            ONNX Runtime measures its graph variants at the first; TensorRT builds one optimization profile per
            size; the CUDA runtime uses them as CUDA-graph buckets.
        max_batch: the shared largest batch of every profile (rows); None = the largest batch size rounded up to
            a multiple of N.
        seq_len: longest sequence (tokens) to build and optimise for; None = the model's limit (its compiled
            length when multiplexed, else min(128, position table)).
        threads: intra-op threads (None = the backend's default).
        out_dir: where build products go (None = next to the ONNX file).
        bench_rounds / bench_warmup: timed / untimed interleaved rounds of any build-time measurement.
        options: backend-specific settings by name (``Backend.option_names`` lists what a backend accepts).

    Raises:
        InputError: unknown precision, batch sizes / threads / rounds out of range.
    """

    precision: str = "fp32"
    batch_sizes: tuple[int, ...] = ()
    max_batch: int | None = None
    seq_len: int | None = None
    threads: int | None = None
    out_dir: Path | None = None
    bench_rounds: int = 5
    bench_warmup: int = 1
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise InputError(f"precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if any(int(b) < 1 for b in self.batch_sizes) or (self.max_batch is not None and int(self.max_batch) < 1):
            raise InputError("EngineConfig: batch sizes and max_batch must be >= 1")
        if self.threads is not None and int(self.threads) < 1:
            raise InputError(f"threads={self.threads}: must be >= 1")
        if self.seq_len is not None and int(self.seq_len) < 1:
            raise InputError(f"seq_len={self.seq_len}: must be >= 1")
        if self.bench_rounds < 1 or self.bench_warmup < 0:
            raise InputError("EngineConfig: bench_rounds must be >= 1 and bench_warmup >= 0")

    def option(self, name: str, default=None):
        """``options[name]`` or ``default``."""
        return self.options.get(name, default)

    def profile_batches(self, num_instances: int) -> list[int]:
        """The batch sizes of the shape profile (sorted, deduplicated; default ``[8·N]``)."""
        return sorted({int(b) for b in self.batch_sizes}) or [8 * int(num_instances)]


@dataclass(frozen=True)
class Deployment:
    """How a Triton model repository serves an artifact exactly as it was measured.

    Attributes:
        platform: Triton platform (``"onnxruntime_onnx"``, ``"tensorrt_plan"``); None = no Triton platform
            serves this engine (the repository step is then skipped with a warning).
        instance_kind: ``"KIND_CPU"`` or ``"KIND_GPU"``.
        model_file: file name of the artifact inside the version directory (``model.onnx``, ``model.plan``).
        graph_optimization_level: ONNX Runtime session level the artifact was measured under (``"disable_all"``
            for a graph saved after optimisation, ``"all"`` otherwise); None for non-ONNX-Runtime engines.
        intra_op_num_threads / inter_op_num_threads: ONNX Runtime thread pools of the measured session.
        accelerators: ONNX Runtime execution accelerators of the measured session, each
            ``{"name": "cuda", "parameters": {...}}`` (written as ``gpu_execution_accelerator``).
        plan: TensorRT only: ``{"inputs", "outputs", "profiles"}`` for the config validator.
        parameters: backend parameters written into ``config.pbtxt`` ``parameters`` as strings (OpenVINO:
            ``INFERENCE_NUM_THREADS``, ``NUM_STREAMS``, ``PERFORMANCE_HINT``, ``HINT_BF16``).
        note: why ``platform`` is None (no Triton backend serves the artifact as measured), or a caveat.
    """

    platform: str | None
    instance_kind: str = "KIND_CPU"
    model_file: str = "model.onnx"
    graph_optimization_level: str | None = None
    intra_op_num_threads: int | None = None
    inter_op_num_threads: int | None = None
    accelerators: tuple = ()
    plan: dict | None = None
    parameters: dict = field(default_factory=dict)
    note: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Deployment | None":
        if d is None:
            return None
        return cls(**{**d, "accelerators": tuple(d.get("accelerators") or ()),
                      "parameters": dict(d.get("parameters") or {})})


@dataclass
class Artifact:
    """A built engine: what is measured, deployed and judged.

    Attributes:
        backend: registry name of the backend that built it.
        path: the file the runner loads, which is the file measured and the file deployed (one of ``files``).
        files: role -> file of everything the build produced (``"plain"``: the exported graph, ...).
        spec: the model interface.
        precision: the engine precision (a value of :data:`PRECISIONS`).
        criteria: the validation criteria it is judged by (:func:`~prumux_compile.validation.criteria_for`).
        deployment: how Triton serves it (:class:`Deployment`).
        device: ``"cpu"`` or ``"cuda"``: where it runs (and where its eager baseline is timed).
        threads: intra-op threads for sessions (None = backend default).
        report: build report (fusions, measurements, choices and why).
        role_options: role -> load options of that file (ONNX Runtime: ``graph_optimization_level``,
            ``disabled_optimizers``); a role without an entry loads with the backend's defaults.
        runnable: roles that :meth:`Backend.load` can run (each is validated).
        sha256: hex sha256 of ``path`` at build time.
        files_sha256: hex sha256 of every file the artifact consists of (:func:`artifact_file_hashes`: ``path`` and
            its external-data files), by name relative to ``path``'s folder; filled from ``path`` when the backend
            gives ``sha256`` only.
    """

    backend: str
    path: Path
    files: dict[str, Path]
    spec: ExportSpec
    precision: str = "fp32"
    criteria: Criteria | None = None
    deployment: Deployment | None = None
    device: str = "cpu"
    threads: int | None = None
    report: dict = field(default_factory=dict)
    role_options: dict[str, dict] = field(default_factory=dict)
    runnable: tuple[str, ...] = ()
    sha256: str | None = None
    files_sha256: dict[str, str] | None = None

    def __post_init__(self):
        self.path = Path(self.path)
        if self.files_sha256 is None and self.sha256 is not None and self.path.is_file():
            self.files_sha256 = artifact_file_hashes(self.path, self.sha256)
        if self.criteria is None:
            self.criteria = criteria_for(self.backend, self.precision)
        if not self.runnable:
            self.runnable = (self.role,)

    @property
    def role(self) -> str:
        """Which of ``files`` ``path`` is."""
        return next((r for r, p in self.files.items() if Path(p) == Path(self.path)), "plain")

    @property
    def options(self) -> dict:
        """Load options of the file ``path`` points at."""
        return dict(self.role_options.get(self.role, {}))

    def using(self, role: str) -> "Artifact":
        """The same artifact loading ``files[role]`` instead (keeps every graph measurable), with that role's
        load options.

        Raises:
            InputError: no file of that role.
        """
        if role not in self.files:
            raise InputError(f"artifact has no {role!r} graph (has: {', '.join(self.files)})")
        return replace(self, path=Path(self.files[role]))

    def rebased(self, old_dir: Path, new_dir: Path) -> "Artifact":
        """The same artifact after its folder moved from ``old_dir`` to ``new_dir``."""
        def move(p):
            p = Path(p)
            try:
                return Path(new_dir) / p.relative_to(old_dir)
            except ValueError:
                return p

        return replace(self, path=move(self.path), files={r: move(p) for r, p in self.files.items()})

    @classmethod
    def from_record(cls, record: dict, folder: str | Path, spec: ExportSpec, *,
                    threads: int | None = None) -> "Artifact":
        """The artifact :meth:`describe` recorded (``candidate.json``'s ``artifact``), its files in ``folder``:
        what :meth:`Backend.load` needs to run the measured file again with the measured load options.

        Args:
            record: the ``describe()`` dict.
            folder: the folder holding its files (a candidate folder, an export folder).
            spec: the model interface (``Compiled.from_onnx`` of the folder's ``model.onnx``).
            threads: intra-op threads; None = the measured session's (``deployment.intra_op_num_threads``).

        Raises:
            InputError: the record lacks a field ``describe()`` writes, or the artifact file is missing or its
                sha256 differs from the recorded one (the file changed since it was measured).
        """
        folder = Path(folder)
        try:
            backend, name, files = str(record["backend"]), str(record["path"]), dict(record["files"])
        except (KeyError, TypeError) as exc:
            raise InputError(f"{folder}: the artifact record lacks {exc} (not written by describe())") from None
        path = folder / name
        if not path.is_file():
            raise InputError(f"{path}: the artifact file is missing (the record names {name!r})")
        digest = record.get("sha256")
        if digest and file_sha256(path) != digest:
            raise InputError(f"{path}: sha256 differs from the recorded {digest[:12]}...; the file changed since it "
                             "was validated and measured (rebuild it)")
        dep = Deployment.from_dict(record.get("deployment"))
        if threads is None and dep is not None:
            threads = dep.intra_op_num_threads
        role = str(record.get("role") or next((r for r, n in files.items() if n == name), "plain"))
        return cls(backend=backend, path=path, files={r: folder / n for r, n in files.items()}, spec=spec,
                   precision=str(record.get("precision", "fp32")), deployment=dep,
                   device=str(record.get("device", "cpu")), threads=threads, report=dict(record.get("build") or {}),
                   role_options={role: dict(record.get("load_options") or {})},
                   runnable=tuple(record.get("runnable") or ()), sha256=digest)

    def describe(self) -> dict:
        """The JSON summary written to ``candidate.json`` (docs/report.md)."""
        return {"backend": self.backend, "path": self.path.name, "role": self.role, "sha256": self.sha256,
                "files_sha256": self.files_sha256,
                "bytes": self.path.stat().st_size if self.path.is_file() else None, "precision": self.precision,
                "device": self.device, "criteria": self.criteria.to_dict(),
                "files": {k: Path(v).name for k, v in self.files.items()}, "runnable": list(self.runnable),
                "load_options": self.options,
                "deployment": self.deployment.to_dict() if self.deployment else None, "build": self.report}


class Runner(ABC):
    """Runs one loaded engine. Use as a context manager, or call :meth:`close`."""

    spec: ExportSpec

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch.

        Args:
            feeds: ``input_ids`` (required), ``attention_mask``, ``token_type_ids``: integer ``[B, S]`` arrays
                (B >= 1; 1 <= S <= ``spec.max_seq_len``). Missing optional inputs default to all ones / all
                zeros. The arrays are never modified.

        Returns:
            ``{"logits": float32 [B, num_labels]}``.

        Raises:
            InputError: see :func:`prepare_feeds`.
        """

    def close(self) -> None:
        """Release the engine (idempotent)."""

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Backend(ABC):
    """One engine backend; registered by name in :mod:`prumux_compile.engines.registry`.

    Class attributes: ``name`` (registry name), ``precisions`` (what :class:`EngineConfig.precision` may be),
    ``default_precision`` (what the build driver asks for), ``option_names`` (accepted ``EngineConfig.options``).
    """

    name: str = "backend"
    precisions: tuple[str, ...] = ("fp32",)
    default_precision: str = "fp32"
    option_names: tuple[str, ...] = ()

    @abstractmethod
    def available(self) -> tuple[bool, str]:
        """``(True, description)`` when usable here, else ``(False, reason)`` (missing package or device)."""

    @abstractmethod
    def build(self, compiled: Compiled | str | Path, config: EngineConfig | None = None) -> Artifact:
        """Build an engine from a compiled model (a path is read as :meth:`Compiled.from_onnx`).

        Raises:
            EngineBuildError: the backend is unavailable, does not support the precision, or the build failed
                (message names the backend).
            InputError: an option this backend does not know.
        """

    @abstractmethod
    def load(self, artifact: Artifact) -> Runner:
        """Load a built engine for running."""

    def supported_precisions(self) -> tuple[str, ...]:
        """The precisions this backend builds on this machine (a subset of ``precisions``; e.g. bf16 only where
        the CPU computes it natively). The build driver's default precision list."""
        return tuple(self.precisions) if self.available()[0] else ()

    def eager_device(self) -> str:
        """Where this backend's engines run (``"cpu"`` / ``"cuda"``): the eager baseline is timed there too."""
        return "cpu"

    def _start_build(self, compiled: Compiled | str | Path, config: EngineConfig | None
                     ) -> tuple[Compiled, EngineConfig, Path]:
        """Shared start of every ``build``: availability, precision, options, the output folder (created).

        Returns:
            ``(compiled, config, out_dir)``.

        Raises:
            EngineBuildError: unavailable here, or the precision is not supported by this backend.
            InputError: an unknown option name.
        """
        ok, reason = self.available()
        if not ok:
            raise EngineBuildError(f"backend {self.name} is unavailable: {reason}")
        if not isinstance(compiled, Compiled):
            compiled = Compiled.from_onnx(compiled)
        config = config or EngineConfig(precision=self.default_precision)
        if config.precision not in self.precisions:
            raise EngineBuildError(f"backend {self.name} does not build {config.precision} engines "
                                   f"(supported: {', '.join(self.precisions)})")
        unknown = sorted(set(config.options) - set(self.option_names))
        if unknown:
            raise InputError(f"backend {self.name}: unknown option(s) {unknown}; known: "
                             f"{', '.join(self.option_names) or 'none'}")
        out_dir = Path(config.out_dir) if config.out_dir is not None else Path(compiled.onnx_path).parent
        out_dir.mkdir(parents=True, exist_ok=True)
        return compiled, config, out_dir

    def _check_artifact(self, artifact: Artifact) -> None:
        if artifact.backend != self.name:
            raise InputError(f"artifact was built by {artifact.backend}, not {self.name}")


_OPTIONAL_DEFAULTS = {"attention_mask": 1, "token_type_ids": 0}


def prepare_feeds(feeds: dict, spec: ExportSpec) -> dict[str, np.ndarray]:
    """Checked int64 feeds for every graph input of ``spec`` (the caller's arrays are not modified).

    Args:
        feeds: name -> integer array-like ``[B, S]``; ``input_ids`` required.
        spec: the model interface.

    Returns:
        name -> C-contiguous int64 ``[B, S]`` array for each of ``spec.input_names``.

    Raises:
        InputError: unknown or missing input names, non-integer dtype, not 2-D, B or S == 0, shapes that
            differ between inputs, ``S > spec.max_seq_len`` (the compiled length of a multiplexed model),
            token ids outside ``[0, vocab_size)``, negative segment ids, and segment ids outside
            ``[0, type_vocab_size)`` where the family uses them (field fault F20 in docs/field-faults.md; multiplexed families ignore
            ``token_type_ids``, as upstream).
    """
    if not isinstance(feeds, dict):
        raise InputError(f"feeds must be a dict of arrays, got {type(feeds).__name__}")
    unknown = sorted(set(feeds) - set(spec.input_names))
    if unknown:
        raise InputError(f"unknown input(s) {unknown}; the model takes {', '.join(spec.input_names)}")
    if "input_ids" not in feeds:
        raise InputError("feeds lack 'input_ids'")
    out: dict[str, np.ndarray] = {}
    for name in spec.input_names:
        if name not in feeds:
            continue
        a = np.asarray(feeds[name])
        if a.dtype.kind not in "iub":
            raise InputError(f"{name}: expected an integer array, got dtype {a.dtype}")
        if a.ndim != 2:
            raise InputError(f"{name}: expected shape [batch, sequence], got {list(a.shape)}")
        out[name] = np.ascontiguousarray(a, dtype=np.int64)
    b, s = out["input_ids"].shape
    if b == 0 or s == 0:
        raise InputError(f"input_ids: empty batch or sequence (shape {[b, s]})")
    for name, a in out.items():
        if a.shape != (b, s):
            raise InputError(f"{name}: shape {list(a.shape)} differs from input_ids {[b, s]}")
    if s > spec.max_seq_len:
        what = (f"the compiled length seq_len={spec.seq_len} of this multiplexed model (re-export with a larger "
                "--seq-len, or truncate)" if spec.seq_len is not None
                else f"the {spec.max_seq_len} position embeddings of the model (truncate the input)")
        raise InputError(f"input_ids: sequence length {s} exceeds {what}")
    ids = out["input_ids"]
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= spec.vocab_size:
        raise InputError(f"input_ids: ids must lie in [0, {spec.vocab_size}); got min {lo}, max {hi}")
    for name, fill in _OPTIONAL_DEFAULTS.items():
        if name in spec.input_names and name not in out:
            out[name] = np.full((b, s), fill, dtype=np.int64)
    if "token_type_ids" in feeds and (out["token_type_ids"].min() < 0):
        raise InputError("token_type_ids: negative segment ids")
    tt = out.get("token_type_ids")
    if tt is not None and "token_type_ids" not in spec.ignored_inputs and int(tt.max()) >= spec.type_vocab_size:
        raise InputError(
            f"token_type_ids: segment id {int(tt.max())} is outside the model's token-type table of "
            f"{spec.type_vocab_size} row(s); segment ids must lie in [0, {spec.type_vocab_size})"
        )
    return {name: out[name] for name in spec.input_names}
