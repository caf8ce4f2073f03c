"""The engine interface (DESIGN.md "Engines"): ``build(onnx_path, BuildSpec) -> Artifact``,
``load(artifact) -> Runner``, ``Runner.run(feeds) -> outputs``.

Runners are context managers (Polygraphy's idea): ``with backend.load(artifact) as runner: runner.run(feeds)``.
Input checking shared by every backend lives in :func:`prepare_feeds`: it refuses a sequence longer than the
model accepts with :class:`~prumux_compile.errors.InputError` *before* any backend code runs, fills the
optional inputs, and never writes the caller's arrays (fault class F18).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from prumux_compile.errors import InputError
from prumux_compile.export.spec import ExportSpec

__all__ = ["BuildSpec", "Artifact", "Runner", "Backend", "prepare_feeds"]


@dataclass
class BuildSpec:
    """How to build an engine.

    Attributes:
        threads: intra-op threads of the sessions (None = the backend's default, all physical cores).
        optimize: also write a fused graph (``model.ort.onnx`` for ONNX Runtime).
        prefer: which graph the engine uses: ``"auto"`` (the faster one, measured at build time),
            ``"plain"`` (``model.onnx``) or ``"fused"`` (``model.ort.onnx``).
        out_dir: where build products go (None = next to the ONNX file).
        bench_batch: batch size of the build-time measurement (None = 8·N rows).
        bench_rounds, bench_warmup: timed / untimed interleaved rounds of that measurement.
    """

    threads: int | None = None
    optimize: bool = True
    prefer: str = "auto"
    out_dir: Path | None = None
    bench_batch: int | None = None
    bench_rounds: int = 5
    bench_warmup: int = 1

    def __post_init__(self):
        if self.prefer not in ("auto", "plain", "fused"):
            raise InputError(f"BuildSpec.prefer={self.prefer!r}: expected 'auto', 'plain' or 'fused'")
        if self.threads is not None and int(self.threads) < 1:
            raise InputError(f"threads={self.threads}: must be >= 1")
        if self.bench_rounds < 1 or self.bench_warmup < 0:
            raise InputError("BuildSpec: bench_rounds must be >= 1 and bench_warmup >= 0")


@dataclass
class Artifact:
    """A built engine: what to load and how.

    Attributes:
        backend: registry name of the backend that built it.
        path: the file the runner loads (one of ``files``).
        files: role -> file (``"plain"``: the exported graph; ``"fused"``: the backend-optimised graph).
        spec: the model interface (from the ONNX metadata).
        threads: intra-op threads for sessions (None = backend default).
        report: build report (fusion counts, measurement, choice and why).
        options: backend-specific load options chosen at build time for ``path`` (ONNX Runtime:
            ``{"disabled_optimizers": [...]}``); empty = the backend's defaults.
    """

    backend: str
    path: Path
    files: dict[str, Path]
    spec: ExportSpec
    threads: int | None = None
    report: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    @property
    def role(self) -> str:
        """Which of ``files`` ``path`` is."""
        return next((r for r, p in self.files.items() if Path(p) == Path(self.path)), "plain")

    def using(self, role: str) -> "Artifact":
        """The same artifact loading ``files[role]`` instead (keeps every graph measurable). The build-time
        ``options`` are kept for the role they were chosen for and reset to the defaults for another role.

        Raises:
            InputError: no file of that role.
        """
        if role not in self.files:
            raise InputError(f"artifact has no {role!r} graph (has: {', '.join(self.files)})")
        return replace(self, path=Path(self.files[role]), options=dict(self.options) if role == self.role else {})


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
    """One engine backend; registered by name in :mod:`prumux_compile.engines.registry`."""

    name: str = "backend"

    @abstractmethod
    def available(self) -> tuple[bool, str]:
        """``(True, description)`` when usable here, else ``(False, reason)`` (missing package or device)."""

    @abstractmethod
    def build(self, onnx_path: str | Path, spec: BuildSpec | None = None) -> Artifact:
        """Build an engine from an exported ``model.onnx``.

        Raises:
            EngineBuildError: the backend is unavailable or the build failed (message names the backend).
        """

    @abstractmethod
    def load(self, artifact: Artifact) -> Runner:
        """Load a built engine for running."""

    def _start_build(self, onnx_path: str | Path, spec: BuildSpec | None) -> tuple[BuildSpec, Path, ExportSpec, Path]:
        """Shared start of every ``build``: availability, defaults, the model interface, the output folder.

        Returns:
            ``(spec, onnx_path, interface read from the ONNX metadata, out_dir)``.

        Raises:
            EngineBuildError: the backend is unavailable here.
        """
        from prumux_compile.errors import EngineBuildError
        from prumux_compile.export.onnx_export import read_metadata

        ok, reason = self.available()
        if not ok:
            raise EngineBuildError(f"backend {self.name} is unavailable: {reason}")
        spec = spec or BuildSpec()
        onnx_path = Path(onnx_path)
        xspec = ExportSpec.from_metadata(read_metadata(onnx_path))
        out_dir = Path(spec.out_dir) if spec.out_dir is not None else onnx_path.parent
        return spec, onnx_path, xspec, out_dir


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
            ``[0, type_vocab_size)`` where the family uses them (fault class F20; multiplexed families ignore
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
