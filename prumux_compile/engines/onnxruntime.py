"""ONNX Runtime engines: ``ort-cpu`` (CPU execution provider) and ``ort-cuda`` (CUDA execution provider,
available only where the ``onnxruntime-gpu`` package and a CUDA device are present).

Build = optional fusion (:func:`prumux_compile.passes.onnx.ort_fuse` writes ``model.ort.onnx``, a separate
artifact that may hold ``com.microsoft`` ops; fault class F17) + a measurement that picks the fastest of the
:data:`VARIANTS`: ``model.onnx`` as ONNX Runtime optimises it, ``model.onnx`` with ORT's session-level
``SkipLayerNormFusion`` disabled (Add + LayerNormalization kept apart), and ``model.ort.onnx``.
docs/environment.md: on this CPU the fused graphs were *not* faster than the plain export, and a fused
SkipLayerNormalization was slower than Add + LayerNormalization; measured here on a BERT-base-shaped N=2,
60 %-sparse model: plain 1598 ms, plain without SkipLayerNormFusion 1442 ms, fused 1553 ms (medians of 9
interleaved rounds, batch 16). So the choice is made by measurement on the machine that builds, and every
graph stays loadable (:meth:`Artifact.using`).

Sessions: ``graph_optimization_level = ORT_ENABLE_ALL``, sequential execution, one inter-op thread,
``intra_op_num_threads`` from :class:`~prumux_compile.engines.base.BuildSpec` (0 = ORT default),
``disabled_optimizers`` from the artifact's ``options``.
"""
from __future__ import annotations

from importlib import metadata as _metadata
from pathlib import Path

import numpy as np

from prumux_compile.bench.timing import interleaved
from prumux_compile.engines.base import Artifact, Backend, BuildSpec, Runner, prepare_feeds
from prumux_compile.errors import EngineBuildError, InputError
from prumux_compile.export.inputs import realistic_inputs
from prumux_compile.export.onnx_export import check_onnx
from prumux_compile.export.spec import OUTPUT_NAME, ExportSpec

__all__ = ["OrtCpuBackend", "OrtCudaBackend", "OrtRunner", "FUSED_FILENAME", "VARIANTS"]

FUSED_FILENAME = "model.ort.onnx"
#: Candidates measured by ``build(prefer="auto")``: name -> (graph role, ORT optimizers disabled in the session).
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "plain": ("plain", ()),
    "plain/no-skip-layernorm": ("plain", ("SkipLayerNormFusion",)),
    "fused": ("fused", ()),
}


def _ort():
    import onnxruntime

    return onnxruntime


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


class OrtRunner(Runner):
    """An ONNX Runtime inference session behind the :class:`Runner` interface.

    Args:
        path: the ``.onnx`` file.
        spec: the model interface (checks in :func:`prepare_feeds`).
        threads: intra-op threads (None = ORT default).
        providers: execution providers in priority order.
        disabled_optimizers: names of ORT graph optimizers not to run in this session (e.g.
            ``"SkipLayerNormFusion"``).

    Raises:
        EngineBuildError: ONNX Runtime cannot create a session for the file.
    """

    def __init__(self, path: str | Path, spec: ExportSpec, *, threads: int | None = None,
                 providers: tuple[str, ...] = ("CPUExecutionProvider",), disabled_optimizers=()):
        ort = _ort()
        self.path = Path(path)
        self.spec = spec
        self.threads = threads
        self.disabled_optimizers = tuple(disabled_optimizers)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or 0)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=opts, providers=list(providers),
                                                 disabled_optimizers=list(disabled_optimizers) or None)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise EngineBuildError(f"onnxruntime cannot load {self.path.name}: {_first_line(exc)}") from None
        self._inputs = [i.name for i in self._session.get_inputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """See :meth:`Runner.run`. Raises :class:`InputError` before calling ONNX Runtime on bad input."""
        if self._session is None:
            raise InputError(f"runner for {self.path.name} is closed")
        checked = prepare_feeds(feeds, self.spec)
        (logits,) = self._session.run([OUTPUT_NAME], {k: v for k, v in checked.items() if k in self._inputs})
        return {OUTPUT_NAME: logits}

    def close(self) -> None:
        self._session = None


class OrtCpuBackend(Backend):
    """``ort-cpu``: ONNX Runtime on the CPU execution provider."""

    name = "ort-cpu"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)

    def available(self) -> tuple[bool, str]:
        try:
            ort = _ort()
        except ImportError:
            return False, "Python package 'onnxruntime' is not installed (install the [cpu] extra)"
        missing = [p for p in self.providers if p not in ort.get_available_providers()]
        if missing:
            return False, f"onnxruntime {ort.__version__} lacks {', '.join(missing)}"
        return True, f"onnxruntime {ort.__version__} ({', '.join(self.providers)})"

    def build(self, onnx_path: str | Path, spec: BuildSpec | None = None) -> Artifact:
        """Fuse (optional), check every graph loads, measure the variants, choose the fastest.

        Args:
            onnx_path: an exported ``model.onnx`` (with ``prumux.*`` metadata).
            spec: build options (:class:`BuildSpec`); ``out_dir`` receives ``model.ort.onnx``.

        Returns:
            :class:`Artifact` whose ``report`` holds ``fusion`` (counts, per-layer attention; see
            :class:`~prumux_compile.passes.onnx.FusionReport`), ``timing`` (median ms per measured variant of
            :data:`VARIANTS`; ``prefer="auto"`` only), ``choice`` (the variant) and ``why``; ``options`` holds
            the chosen variant's session options.

        Raises:
            EngineBuildError: backend unavailable, a graph ONNX Runtime cannot load, a mis-fused attention.
            InputError: ``onnx_path`` is not an exported model.
        """
        spec, onnx_path, xspec, out_dir = self._start_build(onnx_path, spec)
        files: dict[str, Path] = {"plain": onnx_path}
        report: dict = {"backend": self.name, "providers": list(self.providers), "threads": spec.threads,
                        "onnxruntime": _dist_version()}
        if spec.optimize:
            from prumux_compile.passes.onnx import ort_fuse

            fused = out_dir / FUSED_FILENAME
            if fused.resolve() == onnx_path.resolve():
                raise EngineBuildError(f"{self.name}: the fused graph would overwrite its input {onnx_path}")
            fusion = ort_fuse(onnx_path, fused, layer_heads=list(xspec.layer_heads))
            check_onnx(fused, xspec, standard_only=False)
            files["fused"] = fused
            report["fusion"] = fusion.to_dict()
        elif spec.prefer == "fused":
            raise EngineBuildError(f"{self.name}: prefer='fused' needs optimize=True")
        variants = {name: v for name, v in VARIANTS.items() if v[0] in files}
        runners = {name: OrtRunner(files[role], xspec, threads=spec.threads, providers=self.providers,
                                   disabled_optimizers=disabled) for name, (role, disabled) in variants.items()}
        try:
            if spec.prefer != "auto":
                choice = spec.prefer
                report["why"] = "requested"
            else:
                report["timing"] = t = self._measure(runners, xspec, spec)
                choice = min(t, key=lambda r: t[r]["p50_ms"])
                first = next(iter(t.values()))
                report["why"] = ("measured fastest: " + ", ".join(f"{r} {t[r]['p50_ms']:.2f} ms" for r in t)
                                 + f" (median of {spec.bench_rounds} interleaved rounds, batch {first['batch']}, "
                                 f"seq {first['seq']}, threads {spec.threads or 'default'})")
        finally:
            for r in runners.values():
                r.close()
        role, disabled = variants[choice]
        report["choice"] = choice
        options = {"disabled_optimizers": list(disabled)} if disabled else {}
        return Artifact(backend=self.name, path=files[role], files=files, spec=xspec, threads=spec.threads,
                        report=report, options=options)

    @staticmethod
    def _measure(runners: dict[str, OrtRunner], xspec: ExportSpec, spec: BuildSpec) -> dict:
        batch = spec.bench_batch or 8 * xspec.num_instances
        seq = xspec.max_seq_len if xspec.muxed else min(128, xspec.max_seq_len)
        feeds = realistic_inputs(batch, seq, xspec.vocab_size, seed=0, type_vocab_size=xspec.type_vocab_size)
        timings = interleaved({role: (lambda r=r: r.run(feeds)) for role, r in runners.items()},
                              batch_size=batch, seq_len=seq, warmup=spec.bench_warmup, rounds=spec.bench_rounds)
        return {role: {"p50_ms": t.p50_ms, "throughput": t.throughput, "batch": batch, "seq": seq}
                for role, t in timings.items()}

    def load(self, artifact: Artifact) -> OrtRunner:
        """An :class:`OrtRunner` for ``artifact.path`` with the artifact's thread count and session options."""
        if artifact.backend != self.name:
            raise InputError(f"artifact was built by {artifact.backend}, not {self.name}")
        return OrtRunner(artifact.path, artifact.spec, threads=artifact.threads, providers=self.providers,
                         disabled_optimizers=artifact.options.get("disabled_optimizers", ()))


class OrtCudaBackend(OrtCpuBackend):
    """``ort-cuda``: ONNX Runtime on the CUDA execution provider (CPU provider as fallback for host ops).

    Available only with the ``onnxruntime-gpu`` package (the [gpu] extra, never together with the CPU
    package) on a machine with a CUDA device.
    """

    name = "ort-cuda"
    providers = ("CUDAExecutionProvider", "CPUExecutionProvider")

    def available(self) -> tuple[bool, str]:
        try:
            ort = _ort()
        except ImportError:
            return False, "Python package 'onnxruntime-gpu' is not installed (install the [gpu] extra)"
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return False, (f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (the CPU package is "
                           "installed; install the [gpu] extra instead)")
        try:
            import torch

            if not torch.cuda.is_available():
                return False, "no CUDA device (torch.cuda.is_available() is False)"
        except ImportError:
            pass
        return True, f"onnxruntime {ort.__version__} (CUDAExecutionProvider)"


def _dist_version() -> str | None:
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            return _metadata.version(name)
        except _metadata.PackageNotFoundError:
            continue
    return None
