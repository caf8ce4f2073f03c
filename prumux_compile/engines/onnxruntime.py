"""ONNX Runtime engines: ``ort-cpu`` (CPU execution provider) and ``ort-cuda`` (CUDA execution provider,
available only where the ``onnxruntime-gpu`` package and a CUDA device are present).

Build = optional fusion (:func:`prumux_compile.passes.onnx.ort_fuse` writes ``model.ort.onnx``, a separate
artifact that may hold ``com.microsoft`` ops; field fault F17 in docs/field-faults.md) + a measurement that picks the fastest of the
graph variants: ``model.onnx`` as ONNX Runtime optimises it, ``model.onnx`` with ORT's session-level
``SkipLayerNormFusion`` disabled (Add + LayerNormalization kept apart), and ``model.ort.onnx``. On the CPUs of
this project the fused graphs were *not* always faster than the plain export, and a fused
SkipLayerNormalization was slower than Add + LayerNormalization (README "Benchmark"); so the choice is made by
measurement on the machine that builds.

What is deployed is what was measured (docs/report.md "artifact"):

* ``ort-cpu`` *bakes* the winner: ONNX Runtime writes the graph it optimised for the measured session
  (``SessionOptions.optimized_model_filepath``, same disabled optimizers, level ``ORT_ENABLE_ALL``) to
  ``model.optimized.onnx``; that file, loaded with ``ORT_DISABLE_ALL``, gives bit-identical logits to the measured
  session (checked at build time) at the same speed, and it is the artifact: validated, benchmarked, hashed and
  copied into the Triton repository with ``optimization { graph { level: 2 } }`` (Triton's "disable all") and the
  measured thread counts. Session-level choices that a Triton config cannot express (disabled optimizers) are
  thereby part of the file.
* ``ort-cuda`` deploys the source graph itself and measures only the variants a config can reproduce (no
  disabled optimizers); fp32 runs with TF32 off (CUDA provider option ``use_tf32=0``, also written as the
  ``cuda`` execution accelerator's parameter) so that it meets the fp32 criteria.

Precisions: ``ort-cpu`` builds fp32 and int8. An int8 build writes the int8 forms of
:mod:`prumux_compile.engines.ort_int8` (ONNX Runtime's dynamic quantization of ``model.onnx`` and of
``model.ort.onnx``, and static QDQ calibrated on ``options["calibration"]``), screens each against the float32
graph on the calibration inputs with the int8 criteria of :mod:`prumux_compile.validation` (a form outside them is
not a candidate for the choice), measures the rest side by side and keeps the fastest; the report records every
form's time and fidelity, so dynamic vs static is visible per candidate.

Sessions: sequential execution, one inter-op thread, ``intra_op_num_threads`` from the
:class:`~prumux_compile.engines.base.EngineConfig` (0 = ORT default). After a session is created its active
providers are checked: a session that silently fell back to the CPU provider is an
:class:`~prumux_compile.errors.EngineBuildError`, never a slow success.
"""
from __future__ import annotations

from importlib import metadata as _metadata
from pathlib import Path

import numpy as np

from prumux_compile.bench.timing import interleaved
from prumux_compile.engines.base import (Artifact, Backend, Compiled, Deployment, EngineConfig, Runner, file_sha256,
                                         prepare_feeds)
from prumux_compile.errors import EngineBuildError, InputError
from prumux_compile.export.inputs import realistic_inputs
from prumux_compile.export.spec import OUTPUT_NAME, ExportSpec

__all__ = ["OrtCpuBackend", "OrtCudaBackend", "OrtRunner", "FUSED_FILENAME", "OPTIMIZED_FILENAME", "VARIANTS",
           "INT8_VARIANTS", "GRAPH_LEVELS"]

FUSED_FILENAME = "model.ort.onnx"
#: The graph ONNX Runtime saved after optimising the winning variant (ort-cpu's deployed artifact).
OPTIMIZED_FILENAME = "model.optimized.onnx"
#: Graph variants measured by ``build(prefer="auto")``: name -> (graph role, ORT optimizers disabled in the session).
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "plain": ("plain", ()),
    "plain/no-skip-layernorm": ("plain", ("SkipLayerNormFusion",)),
    "fused": ("fused", ()),
}
#: int8 graph variants (each an int8 form of :data:`prumux_compile.engines.ort_int8.INT8_FORMS`, role = form name).
INT8_VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "int8-dynamic": ("int8-dynamic", ()),
    "int8-dynamic-fused": ("int8-dynamic-fused", ()),
    "int8-static": ("int8-static", ()),
}
#: Session graph optimisation levels by name (``SessionOptions.graph_optimization_level``).
GRAPH_LEVELS = ("disable_all", "basic", "extended", "all")


def _ort():
    import onnxruntime

    return onnxruntime


def _level(name: str):
    ort = _ort()
    levels = {"disable_all": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    if name not in levels:
        raise InputError(f"graph optimization level {name!r}: expected one of {', '.join(GRAPH_LEVELS)}")
    return levels[name]


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def _session(path: Path, *, threads: int | None, providers, provider_options: dict | None, disabled=(),
             graph_level: str = "all", save_to: Path | None = None):
    """An ``InferenceSession`` with this module's settings; its first provider must be active.

    Raises:
        EngineBuildError: ONNX Runtime cannot load the file, or did not activate the first requested provider
            (e.g. a CUDA session that fell back to the CPU).
        InputError: saving the optimised graph to ``save_to`` failed for lack of disk space (ENOSPC, the path).
    """
    ort = _ort()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or 0)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = _level(graph_level)
    opts.log_severity_level = 3
    if save_to is not None:
        opts.optimized_model_filepath = str(save_to)
        from prumux_compile.export.onnx_export import onnx_data_files

        if onnx_data_files(path):  # past the protobuf limit: the saved graph keeps its weights in its own data file
            opts.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                          Path(save_to).name + ".data")
            opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    requested = [(p, dict((provider_options or {}).get(p, {}))) if (provider_options or {}).get(p) else p
                 for p in providers]
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=requested,
                                       disabled_optimizers=list(disabled) or None)
    except Exception as exc:  # onnxruntime raises its own exception types
        if save_to is not None:  # saving the optimised graph fails with a bare protobuf error on a full disk
            from prumux_compile.errors import InputError
            from prumux_compile.fsutil import describe_os_error, disk_full_error

            full = disk_full_error(save_to, 2 * Path(path).stat().st_size + (1 << 20), exc)
            if full is not None:
                raise InputError(f"cannot write the optimised graph: {describe_os_error(full)}") from None
        raise EngineBuildError(f"onnxruntime cannot load {Path(path).name}: {_first_line(exc)}") from None
    active = list(session.get_providers())
    if providers and providers[0] not in active:
        raise EngineBuildError(f"onnxruntime did not activate {providers[0]} for {Path(path).name} (active: "
                               f"{', '.join(active) or 'none'}); refusing a silent fallback")
    return session


class OrtRunner(Runner):
    """An ONNX Runtime inference session behind the :class:`Runner` interface.

    Args:
        path: the ``.onnx`` file.
        spec: the model interface (checks in :func:`prepare_feeds`).
        threads: intra-op threads (None = ORT default).
        providers: execution providers in priority order; the first must be active after creation.
        provider_options: provider name -> options (e.g. ``{"CUDAExecutionProvider": {"use_tf32": "0"}}``).
        disabled_optimizers: names of ORT graph optimizers not to run in this session (e.g.
            ``"SkipLayerNormFusion"``).
        graph_level: one of :data:`GRAPH_LEVELS` (``"disable_all"`` for a graph saved after optimisation).

    Raises:
        EngineBuildError: ONNX Runtime cannot create the session, or the first provider is not active.
    """

    def __init__(self, path: str | Path, spec: ExportSpec, *, threads: int | None = None,
                 providers: tuple[str, ...] = ("CPUExecutionProvider",), provider_options: dict | None = None,
                 disabled_optimizers=(), graph_level: str = "all"):
        self.path = Path(path)
        self.spec = spec
        self.threads = threads
        self.disabled_optimizers = tuple(disabled_optimizers)
        self.graph_level = graph_level
        self._session = _session(self.path, threads=threads, providers=providers, provider_options=provider_options,
                                 disabled=self.disabled_optimizers, graph_level=graph_level)
        self.providers = tuple(self._session.get_providers())
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
    """``ort-cpu``: ONNX Runtime on the CPU execution provider (module docstring).

    Options (``EngineConfig.options``): ``optimize`` (bool, default True: also write ``model.ort.onnx``),
    ``prefer`` (``"auto"``: measure; or a variant name of :data:`VARIANTS` / :data:`INT8_VARIANTS`),
    ``calibration`` (int8: int64 feeds ``{"input_ids": [rows, S], ...}`` for static quantization and the fidelity
    screen; default: the measurement inputs, random tokens — give real texts).
    """

    name = "ort-cpu"
    precisions = ("fp32", "int8")
    option_names = ("optimize", "prefer", "calibration")
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    instance_kind = "KIND_CPU"
    #: Save the optimised graph of the winner and deploy that file (module docstring).
    bake = True

    def variants(self, precision: str = "fp32") -> dict[str, tuple[str, tuple[str, ...]]]:
        """The graph variants this backend measures at ``precision`` (:data:`VARIANTS`, or
        :data:`INT8_VARIANTS` for int8)."""
        return dict(INT8_VARIANTS if precision == "int8" else VARIANTS)

    def provider_options(self, precision: str) -> dict:
        """Provider name -> options for ``precision`` (none on the CPU)."""
        return {}

    def accelerators(self, precision: str) -> tuple:
        """Triton ``gpu_execution_accelerator`` entries reproducing :meth:`provider_options`."""
        return ()

    def available(self) -> tuple[bool, str]:
        try:
            ort = _ort()
        except ImportError:
            return False, "Python package 'onnxruntime' is not installed (install the [cpu] extra)"
        missing = [p for p in self.providers if p not in ort.get_available_providers()]
        if missing:
            return False, f"onnxruntime {ort.__version__} lacks {', '.join(missing)}"
        return True, f"onnxruntime {ort.__version__} ({', '.join(self.providers)})"

    def eager_device(self) -> str:
        return "cuda" if self.instance_kind == "KIND_GPU" else "cpu"

    def _runner(self, path: Path, spec: ExportSpec, threads, precision: str, *, disabled=(),
                graph_level: str = "all") -> OrtRunner:
        return OrtRunner(path, spec, threads=threads, providers=self.providers,
                         provider_options=self.provider_options(precision), disabled_optimizers=disabled,
                         graph_level=graph_level)

    def build(self, compiled: Compiled | str | Path, config: EngineConfig | None = None) -> Artifact:
        """Fuse (optional), measure the variants, choose the fastest, deploy it as measured.

        Args:
            compiled: the compiled model (only its ``model.onnx`` and interface are used).
            config: :class:`EngineConfig` (fp32 only; ``threads``; the first profile batch and ``seq_len`` are the
                measurement shape; options ``optimize`` and ``prefer``); ``out_dir`` receives ``model.ort.onnx``
                and ``model.optimized.onnx``.

        Returns:
            :class:`Artifact` whose ``report`` holds ``fusion`` (counts, per-layer attention; see
            :class:`~prumux_compile.passes.onnx.FusionReport`), ``timing`` (median ms per measured variant;
            ``prefer="auto"`` only), ``choice`` (the variant), ``why`` and, for ort-cpu, ``baked`` (source graph,
            disabled optimizers, bit-identity check). ``runnable`` (what the build driver validates) is the
            exported ``model.onnx`` and the deployed file; every file of ``files`` loads with :meth:`load`.

        Raises:
            EngineBuildError: backend unavailable, a graph ONNX Runtime cannot load, a mis-fused attention, a
                baked graph that does not reproduce the measured session.
            InputError: ``compiled`` is not an exported model, or a bad option.
        """
        compiled, config, out_dir = self._start_build(compiled, config)
        xspec, onnx_path = compiled.spec, Path(compiled.onnx_path)
        optimize = bool(config.option("optimize", True))
        prefer = config.option("prefer", "auto")
        files: dict[str, Path] = {"plain": onnx_path}
        report: dict = {"backend": self.name, "providers": list(self.providers), "threads": config.threads,
                        "onnxruntime": _dist_version(), "precision": config.precision}
        if optimize:
            from prumux_compile.export.onnx_export import check_onnx
            from prumux_compile.passes.onnx import ort_fuse

            fused = out_dir / FUSED_FILENAME
            if fused.resolve() == onnx_path.resolve():
                raise EngineBuildError(f"{self.name}: the fused graph would overwrite its input {onnx_path}")
            fusion = ort_fuse(onnx_path, fused, layer_heads=list(xspec.layer_heads))
            check_onnx(fused, xspec, standard_only=False)
            files["fused"] = fused
            report["fusion"] = fusion.to_dict()
        batch = config.profile_batches(xspec.num_instances)[0]
        seq = int(config.seq_len or (xspec.max_seq_len if xspec.muxed else min(128, xspec.max_seq_len)))
        feeds = realistic_inputs(batch, min(seq, xspec.max_seq_len), xspec.vocab_size, seed=0,
                                 type_vocab_size=xspec.type_vocab_size)
        screen = None
        if config.precision == "int8":
            screen = self._int8_forms(files, out_dir, config, feeds, batch, report)
        variants = {name: v for name, v in self.variants(config.precision).items() if v[0] in files}
        if prefer != "auto" and prefer not in variants:
            if prefer == "fused" and not optimize:
                raise EngineBuildError(f"{self.name}: prefer='fused' needs optimize=True")
            raise InputError(f"{self.name}: prefer={prefer!r}: expected 'auto' or one of {', '.join(variants)}")
        wanted = variants if prefer == "auto" else {prefer: variants[prefer]}
        runners = {name: self._runner(files[role], xspec, config.threads, config.precision, disabled=disabled)
                   for name, (role, disabled) in wanted.items()}
        try:
            if screen is not None:
                report["int8_screen"] = self._screen(runners, screen, files["plain"], xspec, config, prefer)
                for name in [n for n, r in report["int8_screen"].items() if not r["passed"]]:
                    runners.pop(name).close()
            if prefer != "auto":
                choice = prefer
                report["why"] = "requested"
            else:
                t = interleaved({name: (lambda r=r: r.run(feeds)) for name, r in runners.items()}, batch_size=batch,
                                seq_len=feeds["input_ids"].shape[1], warmup=config.bench_warmup,
                                rounds=config.bench_rounds)
                report["timing"] = {name: {"p50_ms": v.p50_ms, "throughput": v.throughput, "batch": batch,
                                           "seq": feeds["input_ids"].shape[1]} for name, v in t.items()}
                choice = min(t, key=lambda r: t[r].p50_ms)
                report["why"] = ("measured fastest: " + ", ".join(f"{r} {t[r].p50_ms:.2f} ms" for r in t)
                                 + f" (median of {config.bench_rounds} interleaved rounds, batch {batch}, seq "
                                 f"{feeds['input_ids'].shape[1]}, threads {config.threads or 'default'})")
            measured_out = runners[choice].run(feeds)[OUTPUT_NAME]
        finally:
            for r in runners.values():
                r.close()
        role, disabled = variants[choice]
        report["choice"] = choice
        role_options: dict[str, dict] = {}
        if self.bake:
            path = self._bake(files[role], out_dir / OPTIMIZED_FILENAME, xspec, config, disabled, feeds,
                              measured_out, report)
            files["optimized"] = path
            role_options["optimized"] = {"graph_optimization_level": "disable_all"}
            level = "disable_all"
        else:
            path = files[role]
            if disabled:
                role_options[role] = {"disabled_optimizers": list(disabled)}
            level = "all"
        deployment = Deployment(platform="onnxruntime_onnx", instance_kind=self.instance_kind, model_file="model.onnx",
                                graph_optimization_level=level, intra_op_num_threads=config.threads,
                                inter_op_num_threads=1, accelerators=self.accelerators(config.precision))
        return Artifact(backend=self.name, path=path, files=files, spec=xspec, precision=config.precision,
                        deployment=deployment, device=self.eager_device(), threads=config.threads, report=report,
                        role_options=role_options, runnable=tuple(dict.fromkeys(("plain", _role_of(files, path)))),
                        sha256=file_sha256(path))

    def _int8_forms(self, files: dict[str, Path], out_dir: Path, config: EngineConfig, feeds: dict, batch: int,
                    report: dict) -> dict[str, np.ndarray]:
        """Write every int8 form whose source graph exists (``files`` gains one role per form); returns the
        screening inputs (the calibration inputs)."""
        from prumux_compile.engines.ort_int8 import INT8_FORMS, calibration_feeds, quantize_graph

        calib = calibration_feeds(config.option("calibration"), feeds)
        report["calibration"] = {"rows": int(calib["input_ids"].shape[0]), "seq": int(calib["input_ids"].shape[1]),
                                 "source": ("options['calibration'] (texts given by the caller)"
                                            if config.option("calibration") is not None
                                            else "the measurement inputs (random tokens; no texts given)")}
        forms = {}
        for form, (source_role, _) in INT8_FORMS.items():
            if source_role not in files:
                continue
            target = out_dir / f"model.{form}.onnx"
            forms[form] = quantize_graph(form, files[source_role], target, calibration=calib, batch=batch)
            files[form] = target
        report["int8"] = forms
        return calib

    def _screen(self, runners: dict, calib: dict[str, np.ndarray], plain: Path, xspec: ExportSpec,
                config: EngineConfig, prefer: str) -> dict:
        """Compare each int8 variant with the float32 graph (``model.onnx``) on the calibration inputs under the
        int8 criteria; a variant outside them is dropped from the choice (raises when none is left, or the
        preferred one is dropped)."""
        from prumux_compile.validation import compare, criteria_for

        crit = criteria_for(self.name, "int8")
        batch = max(1, min(int(calib["input_ids"].shape[0]), 8 * xspec.num_instances))
        with self._runner(plain, xspec, config.threads, "fp32") as ref_runner:
            ref = _predict_rows(ref_runner, calib, batch)
        out = {}
        for name, runner in runners.items():
            c = compare(_predict_rows(runner, calib, batch), ref, crit)
            out[name] = {"passed": bool(c.within and (crit.min_agreement is None
                                                      or c.argmax_agreement >= crit.min_agreement)),
                         "max_abs_diff_vs_fp32": c.max_abs_diff, "argmax_agreement_vs_fp32": c.argmax_agreement,
                         "rows": c.rows, "criteria": crit.describe()}
        if not any(r["passed"] for r in out.values()):
            detail = "; ".join(f"{k}: max |Δ| {v['max_abs_diff_vs_fp32']:.3g}, argmax agreement "
                               f"{v['argmax_agreement_vs_fp32']:.3f}" for k, v in out.items())
            raise EngineBuildError(f"{self.name}: no int8 form stays within {crit.describe()} of the float32 graph "
                                   f"({detail})")
        if prefer != "auto" and not out[prefer]["passed"]:
            raise EngineBuildError(f"{self.name}: the requested int8 form {prefer} is outside {crit.describe()} of "
                                   "the float32 graph")
        return out

    def _bake(self, source: Path, target: Path, xspec: ExportSpec, config: EngineConfig, disabled, feeds,
              measured_out: np.ndarray, report: dict) -> Path:
        """Save ONNX Runtime's optimised graph of ``source`` (the measured session's settings) to ``target`` and
        check it reproduces the measured session's logits bit for bit when loaded with ``disable_all``."""
        from prumux_compile.export.onnx_export import check_onnx

        if target.resolve() == Path(source).resolve():
            raise EngineBuildError(f"{self.name}: the optimised graph would overwrite its source {source}")
        target.unlink(missing_ok=True)
        _session(source, threads=config.threads, providers=self.providers,
                 provider_options=self.provider_options(config.precision), disabled=disabled, graph_level="all",
                 save_to=target)
        if not target.is_file():
            raise EngineBuildError(f"{self.name}: onnxruntime did not write the optimised graph {target.name}")
        check_onnx(target, xspec, standard_only=False)
        with self._runner(target, xspec, config.threads, config.precision, graph_level="disable_all") as r:
            again = r.run(feeds)[OUTPUT_NAME]
        same = bool(np.array_equal(again, measured_out))
        report["baked"] = {"source": Path(source).name, "disabled_optimizers": list(disabled),
                           "saved_at_level": "all", "loaded_at_level": "disable_all", "bitwise_equal": same}
        if not same:
            diff = float(np.max(np.abs(again.astype(np.float64) - measured_out)))
            raise EngineBuildError(f"{self.name}: the saved optimised graph {target.name} does not reproduce the "
                                   f"measured session (max |Δlogit| {diff:.3g})")
        return target

    def load(self, artifact: Artifact) -> OrtRunner:
        """An :class:`OrtRunner` for ``artifact.path`` with the artifact's threads and that file's load options."""
        self._check_artifact(artifact)
        opts = artifact.options
        return self._runner(artifact.path, artifact.spec, artifact.threads, artifact.precision,
                            disabled=opts.get("disabled_optimizers", ()),
                            graph_level=opts.get("graph_optimization_level", "all"))


class OrtCudaBackend(OrtCpuBackend):
    """``ort-cuda``: ONNX Runtime on the CUDA execution provider (CPU provider as fallback for host ops only).

    Available only with the ``onnxruntime-gpu`` package (the [gpu] extra, never together with the CPU
    package) on a machine with a CUDA device. Deploys the measured source graph (module docstring).
    """

    name = "ort-cuda"
    precisions = ("fp32",)
    option_names = ("optimize", "prefer")
    providers = ("CUDAExecutionProvider", "CPUExecutionProvider")
    instance_kind = "KIND_GPU"
    bake = False

    def variants(self, precision: str = "fp32") -> dict[str, tuple[str, tuple[str, ...]]]:
        """Only variants a Triton config can reproduce: no session-level disabled optimizers."""
        return {k: v for k, v in VARIANTS.items() if not v[1]}

    def provider_options(self, precision: str) -> dict:
        """fp32: TF32 off, so fp32 GEMMs are fp32 (the fp32 criteria of :mod:`prumux_compile.validation`)."""
        return {"CUDAExecutionProvider": {"use_tf32": "0"}} if precision == "fp32" else {}

    def accelerators(self, precision: str) -> tuple:
        opts = self.provider_options(precision).get("CUDAExecutionProvider")
        return ({"name": "cuda", "parameters": dict(opts)},) if opts else ()

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


def _predict_rows(runner, feeds: dict[str, np.ndarray], batch: int) -> np.ndarray:
    """Logits of every row of ``feeds``, ``batch`` rows per run."""
    rows = feeds["input_ids"].shape[0]
    return np.concatenate([runner.run({k: v[i : i + batch] for k, v in feeds.items()})[OUTPUT_NAME]
                           for i in range(0, rows, batch)], axis=0)


def _role_of(files: dict[str, Path], path: Path) -> str:
    return next(r for r, p in files.items() if Path(p) == Path(path))


def _dist_version() -> str | None:
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            return _metadata.version(name)
        except _metadata.PackageNotFoundError:
            continue
    return None
