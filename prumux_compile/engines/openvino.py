"""``openvino``: the OpenVINO runtime on the CPU (PyPI ``openvino``, the ``[openvino]`` extra).

Build = OpenVINO reads the exported ``model.onnx`` directly (its ONNX frontend), the model is saved as OpenVINO IR
(``model.xml`` + ``model.bin``, :func:`openvino.save_model` with ``compress_to_fp16=False`` so the weights stay
float32), and the IR is compiled for the CPU with the inference precision of the candidate:

* ``fp32``: ``INFERENCE_PRECISION_HINT=f32`` (OpenVINO's CPU plugin defaults to bf16 on CPUs with native bf16,
  this one included, so the hint is always set);
* ``bf16``: ``INFERENCE_PRECISION_HINT=bf16`` (only on CPUs whose ``OPTIMIZATION_CAPABILITIES`` list ``BF16``;
  :meth:`OpenVinoBackend.supported_precisions`), judged by the ``("openvino", "bf16")`` criteria;
* ``int8``: NNCF's post-training quantization (``nncf.quantize``, ``ModelType.TRANSFORMER``: SmoothQuant, fast bias
  correction; int8 weights and activations of the encoder's GEMMs) calibrated on ``options["calibration"]``, with
  every GEMM outside the encoder layers (multiplexer, demultiplexer, classifier) in NNCF's ignored scope; the int8
  IR is compiled at the CPU's default inference precision for the ops left in floating point (what Triton's
  openvino backend does too), judged by the int8 criteria. Only where ``nncf`` is installed (the ``[openvino]``
  extra). On this CPU it measured faster than ONNX Runtime's int8 on dense BERT-base (about 1.6x) and slower than
  OpenVINO bf16 at N = 10, s = 0.95: the build measures it next to the others.

Both with ``PERFORMANCE_HINT=LATENCY``, one stream and ``INFERENCE_NUM_THREADS`` = the build's threads, the same
settings as the ONNX Runtime sessions (one request at a time on all threads). The IR (``model.xml``) is the
artifact: validated, benchmarked, hashed (``model.bin``'s hash is in the build report) and copied into the Triton
repository.

Deployment: Triton's ``openvino`` backend (triton-inference-server/openvino_backend, README "Parameters"):
``INFERENCE_NUM_THREADS``, ``NUM_STREAMS``, ``PERFORMANCE_HINT`` and, for bf16, ``HINT_BF16: YES``. That backend
has no parameter that forces f32 (``HINT_BF16`` accepts only ``YES``), so on a CPU whose OpenVINO default is bf16
it would serve an fp32 IR in bf16 — not what was measured: there the fp32 candidate gets no Triton platform and the
reason is recorded (:attr:`~prumux_compile.engines.base.Deployment.note`).

Unavailable, with the reason, when the ``openvino`` package or its CPU device is missing.
"""
from __future__ import annotations

import importlib.util
from importlib import metadata as _metadata
from pathlib import Path

import numpy as np

from prumux_compile.engines.base import (Artifact, Backend, Compiled, Deployment, EngineConfig, Runner, file_sha256,
                                         prepare_feeds)
from prumux_compile.errors import EngineBuildError, InputError
from prumux_compile.export.spec import OUTPUT_NAME, ExportSpec

__all__ = ["OpenVinoBackend", "OpenVinoRunner", "IR_FILENAME", "WEIGHTS_FILENAME", "INFERENCE_PRECISIONS",
           "triton_parameters"]

IR_FILENAME = "model.xml"
WEIGHTS_FILENAME = "model.bin"
#: Engine precision -> OpenVINO ``INFERENCE_PRECISION_HINT`` (int8: the CPU's default for the float ops, None).
INFERENCE_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "int8": None}


def _ov():
    import openvino

    return openvino


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _text(value) -> str:
    """An OpenVINO property value as text (``ov.Type`` -> ``"bf16"``)."""
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


def compile_properties(precision: str, threads: int | None) -> dict[str, str]:
    """OpenVINO CPU properties of an engine: precision hint (none for int8), latency hint, one stream, threads."""
    props = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
    if INFERENCE_PRECISIONS[precision] is not None:
        props["INFERENCE_PRECISION_HINT"] = INFERENCE_PRECISIONS[precision]
    if threads:
        props["INFERENCE_NUM_THREADS"] = str(int(threads))
    return props


def triton_parameters(precision: str, threads: int | None, cpu_default: str = "f32") -> dict[str, str]:
    """``config.pbtxt`` parameters of Triton's openvino backend reproducing :func:`compile_properties`
    (names and values from the backend's README, "Parameters"); int8 states the CPU default it was measured at
    when that default is bf16."""
    params = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
    if threads:
        params["INFERENCE_NUM_THREADS"] = str(int(threads))
    if precision == "bf16" or (precision == "int8" and cpu_default == "bf16"):
        params["HINT_BF16"] = "YES"
    return params


class OpenVinoRunner(Runner):
    """An OpenVINO compiled model (one infer request) behind the :class:`Runner` interface.

    Args:
        path: ``model.xml`` (or any model OpenVINO reads).
        spec: the model interface.
        precision: ``"fp32"`` or ``"bf16"`` (:data:`INFERENCE_PRECISIONS`).
        threads: ``INFERENCE_NUM_THREADS`` (None = OpenVINO's default).
        perf_counters: enable OpenVINO's per-layer counters (``PERF_COUNT``; :meth:`profile` reads them).

    Raises:
        EngineBuildError: OpenVINO cannot read or compile the model.
    """

    def __init__(self, path: str | Path, spec: ExportSpec, *, precision: str = "fp32", threads: int | None = None,
                 perf_counters: bool = False):
        ov = _ov()
        self.path = Path(path)
        self.spec = spec
        self.precision = precision
        props = compile_properties(precision, threads)
        if perf_counters:
            props["PERF_COUNT"] = "YES"
        try:
            core = ov.Core()
            self._compiled = core.compile_model(core.read_model(str(self.path)), "CPU", props)
        except Exception as exc:  # openvino raises RuntimeError subclasses of its own
            raise EngineBuildError(f"openvino cannot compile {self.path.name}: {_first_line(exc)}") from None
        self.properties = {k: _text(self._compiled.get_property(k)) for k in ("INFERENCE_PRECISION_HINT",
                                                                              "INFERENCE_NUM_THREADS", "NUM_STREAMS")}
        self._inputs = {i.any_name for i in self._compiled.inputs}
        self._request = self._compiled.create_infer_request()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """See :meth:`Runner.run`. Raises :class:`InputError` before calling OpenVINO on bad input."""
        if self._request is None:
            raise InputError(f"runner for {self.path.name} is closed")
        checked = prepare_feeds(feeds, self.spec)
        result = self._request.infer({k: v for k, v in checked.items() if k in self._inputs})
        logits = np.array(result[self._compiled.output(OUTPUT_NAME)], dtype=np.float32, copy=True)
        return {OUTPUT_NAME: logits}

    def profile(self) -> list[dict]:
        """Per-layer counters of the last run (needs ``perf_counters=True``): ``node``, ``type``, ``exec_type``
        (the kernel and its precision, e.g. ``brgemm_avx512_bf16``), ``us`` (CPU time, microseconds)."""
        return [{"node": p.node_name, "type": p.node_type, "exec_type": p.exec_type,
                 "us": p.real_time.total_seconds() * 1e6} for p in self._request.profiling_info]

    def close(self) -> None:
        self._request = None
        self._compiled = None


class OpenVinoBackend(Backend):
    """``openvino``: OpenVINO IR on the CPU at fp32 or bf16 inference precision (module docstring)."""

    name = "openvino"
    precisions = ("fp32", "bf16", "int8")
    option_names = ("calibration",)

    def available(self) -> tuple[bool, str]:
        try:
            ov = _ov()
        except ImportError:
            return False, "Python package 'openvino' is not installed (install the [openvino] extra)"
        try:
            devices = ov.Core().available_devices
        except Exception as exc:  # pragma: no cover - depends on the machine
            return False, f"openvino {ov.__version__} cannot list devices: {_first_line(exc)}"
        if "CPU" not in devices:
            return False, f"openvino {ov.__version__} has no CPU device (devices: {', '.join(devices) or 'none'})"
        return True, f"openvino {ov.__version__} (CPU)"

    def cpu_capabilities(self) -> tuple[str, ...]:
        """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of the CPU (e.g. ``FP32``, ``BF16``, ``INT8``)."""
        return tuple(str(c) for c in _ov().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))

    def default_inference_precision(self) -> str:
        """The CPU plugin's default ``INFERENCE_PRECISION_HINT`` here (``"f32"`` or ``"bf16"``)."""
        value = _ov().Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
        return value.get_type_name() if hasattr(value, "get_type_name") else str(value)

    def supported_precisions(self) -> tuple[str, ...]:
        """fp32; bf16 where the CPU computes bf16 natively; int8 where ``nncf`` is installed and the CPU has int8."""
        if not self.available()[0]:
            return ()
        caps = self.cpu_capabilities()
        ok = {"fp32": True, "bf16": "BF16" in caps,
              "int8": "INT8" in caps and importlib.util.find_spec("nncf") is not None}
        return tuple(p for p in self.precisions if ok[p])

    def build(self, compiled: Compiled | str | Path, config: EngineConfig | None = None) -> Artifact:
        """Convert ``model.onnx`` to IR (``model.xml`` / ``model.bin`` in ``config.out_dir``), compile it at the
        requested precision and check it runs.

        Raises:
            EngineBuildError: unavailable, bf16 on a CPU without native bf16, OpenVINO cannot read, save or compile
                the model.
        """
        ov = _ov()
        compiled, config, out_dir = self._start_build(compiled, config)
        if config.precision not in self.supported_precisions():
            why = ("Python package 'nncf' is not installed (install the [openvino] extra)"
                   if config.precision == "int8" and importlib.util.find_spec("nncf") is None else
                   f"this CPU has no native {config.precision} (OpenVINO OPTIMIZATION_CAPABILITIES: "
                   f"{', '.join(self.cpu_capabilities())})")
            raise EngineBuildError(f"{self.name}: {why}")
        xspec, onnx_path = compiled.spec, Path(compiled.onnx_path)
        xml = out_dir / IR_FILENAME
        if xml.resolve() == onnx_path.resolve():
            raise EngineBuildError(f"{self.name}: the IR would overwrite its input {onnx_path}")
        try:
            model = ov.Core().read_model(str(onnx_path))
        except Exception as exc:
            raise EngineBuildError(f"openvino cannot read {onnx_path.name}: {_first_line(exc)}") from None
        quant = None
        if config.precision == "int8":
            model, quant = _nncf_int8(model, config, xspec)
        try:
            ov.save_model(model, str(xml), compress_to_fp16=False)
        except Exception as exc:
            raise EngineBuildError(f"openvino cannot save the IR of {onnx_path.name}: {_first_line(exc)}") from None
        bin_path = xml.with_suffix(".bin")
        files = {"plain": onnx_path, "ir": xml, "weights": bin_path}
        with OpenVinoRunner(xml, xspec, precision=config.precision, threads=config.threads) as runner:
            effective = dict(runner.properties)
        default = self.default_inference_precision()
        params = triton_parameters(config.precision, config.threads, default)
        note = None
        platform = "openvino"
        if config.precision == "fp32" and default != "f32":
            platform = None
            note = (f"Triton's openvino backend cannot force f32 (HINT_BF16 accepts only YES) and OpenVINO's CPU "
                    f"default here is {default}: it would not serve this fp32 IR as measured")
        report = {"backend": self.name, "openvino": _dist_version(), "precision": config.precision,
                  "threads": config.threads, "compile_properties": compile_properties(config.precision,
                                                                                       config.threads),
                  "effective_properties": effective, "cpu_default_inference_precision": default,
                  "cpu_capabilities": list(self.cpu_capabilities()), "weights_sha256": file_sha256(bin_path),
                  "source": onnx_path.name, "why": "OpenVINO IR of model.onnx (its ONNX frontend), weights float32"
                  + ("; int8 by NNCF post-training quantization" if quant else "")}
        if quant:
            report["int8"] = quant
        deployment = Deployment(platform=platform, instance_kind="KIND_CPU", model_file=IR_FILENAME,
                                intra_op_num_threads=config.threads, parameters=params, note=note)
        return Artifact(backend=self.name, path=xml, files=files, spec=xspec, precision=config.precision,
                        deployment=deployment, device="cpu", threads=config.threads, report=report,
                        runnable=("ir",), sha256=file_sha256(xml))

    def load(self, artifact: Artifact) -> OpenVinoRunner:
        """An :class:`OpenVinoRunner` of ``artifact.path`` at the artifact's precision and threads.

        Raises:
            EngineBuildError: the file is not an IR OpenVINO can compile (``model.onnx`` is also accepted).
        """
        self._check_artifact(artifact)
        return OpenVinoRunner(artifact.path, artifact.spec, precision=artifact.precision, threads=artifact.threads)


def _nncf_int8(model, config: EngineConfig, xspec: ExportSpec):
    """NNCF post-training int8 quantization of ``model`` (an ``ov.Model``) on the calibration inputs; every GEMM
    outside the encoder layers (``/layers.``) is in the ignored scope. Returns (quantized model, report).

    Raises:
        EngineBuildError: no calibration inputs, or NNCF failed.
    """
    import contextlib
    import io
    import logging

    import nncf

    calib = config.option("calibration")
    if not calib or "input_ids" not in calib:
        raise EngineBuildError("openvino int8: NNCF needs calibration inputs (options['calibration'])")
    names = [i.any_name for i in model.inputs]
    rows = int(np.asarray(calib["input_ids"]).shape[0])
    batch = max(1, min(rows, 8 * xspec.num_instances))
    items = [{k: np.ascontiguousarray(np.asarray(calib[k])[i : i + batch], dtype=np.int64) for k in names if k in calib}
             for i in range(0, rows, batch)]
    kept = [op.get_friendly_name() for op in model.get_ops()
            if op.get_type_name() == "MatMul" and not op.get_friendly_name().startswith("/layers.")]
    logging.getLogger("nncf").setLevel(logging.ERROR)
    try:  # NNCF draws progress bars on stdout/stderr: kept out of the build's own progress output
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            quantized = nncf.quantize(model, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER,
                                      subset_size=len(items),
                                      ignored_scope=nncf.IgnoredScope(names=kept, validate=False))
    except Exception as exc:
        raise EngineBuildError(f"nncf.quantize failed: {_first_line(exc)}") from None
    return quantized, {"method": "nncf.quantize (post-training, ModelType.TRANSFORMER)", "calibration_rows": rows,
                       "kept_fp": kept, "nncf": _dist_version("nncf")}


def _dist_version(name: str = "openvino") -> str | None:
    try:
        return _metadata.version(name)
    except _metadata.PackageNotFoundError:
        return None
