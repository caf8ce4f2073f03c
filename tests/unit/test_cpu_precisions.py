"""CPU precisions: ort-cpu int8 (ONNX Runtime quantization), the OpenVINO backend (fp32 / bf16 IR), their Triton
deployment, and the (backend, precision) candidate plan of the build driver."""
from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest

from prumux_compile.checkpoint import read_raw
from prumux_compile.driver import candidate_id, candidate_plan
from prumux_compile.engines import registry
from prumux_compile.engines.base import Backend, EngineConfig
from prumux_compile.engines.ort_int8 import INT8_FORMS, encoder_gemm_nodes
from prumux_compile.errors import EngineBuildError, InputError
from prumux_compile.export_job import export_into
from prumux_compile.demo.synthetic import SynthSpec, write_checkpoint
from prumux_compile.validation import criteria_for, validate

SEQ = 16
SPEC = dict(family="prumux_compressed", num_instances=2, num_layers=2, hidden=32, heads=4, ffn=32, vocab=128,
            max_pos=64, num_labels=3, heads_kept=[[0, 1, 3], [2]])
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(checkpoint dir, model.onnx) of a tiny N = 2 PruMUX checkpoint, exported and validated at fp32."""
    root = tmp_path_factory.mktemp("prec")
    write_checkpoint(root / "ckpt", SynthSpec(**SPEC))
    (root / "out").mkdir()
    export_into(root / "ckpt", root / "out", seq_len=SEQ, threads=1, ort_optimize=False)
    return root / "ckpt", root / "out" / "model.onnx"


def test_int8_quantizes_only_encoder_gemms(exported, tmp_path):
    """int8 via ONNX Runtime's quantizer: every int8 form is written; its integer GEMMs all sit in the encoder
    layers; the demultiplexer, classifier and embeddings stay float32; the choice is a form that passed the screen,
    baked bit for bit, and the artifact passes the int8 criteria against the float64 reference."""
    ckpt, onnx_path = exported
    backend = registry.get("ort-cpu")
    art = backend.build(onnx_path, EngineConfig(precision="int8", threads=1, out_dir=tmp_path, bench_rounds=3))
    assert set(art.report["int8"]) == set(INT8_FORMS) and all((tmp_path / f"model.{f}.onnx").is_file()
                                                               for f in INT8_FORMS)
    plain_q, plain_kept = encoder_gemm_nodes(onnx.load(str(onnx_path)))
    assert plain_q and all(n.startswith("/layers.") for n in plain_q)
    assert any(n.startswith("/demux/") for n in plain_kept)
    dyn = onnx.load(str(tmp_path / "model.int8-dynamic.onnx"))
    integer = [n for n in dyn.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "QAttention")]
    assert integer and all(n.name.startswith("/layers.") for n in integer)
    float_gemms = {n.name for n in dyn.graph.node if n.op_type in ("MatMul", "Gemm")}
    # mux/demux/classifier stay float (the quantizer rewrites a Gemm as a float MatMul "<name>_MatMul" + Add)
    assert all(n in float_gemms or n + "_MatMul" in float_gemms for n in plain_kept if not n.endswith("_MatMul"))
    static = onnx.load(str(tmp_path / "model.int8-static.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in static.graph.node)
    assert art.report["calibration"]["rows"] > 0
    screen = art.report["int8_screen"]
    assert set(screen) == {"int8-dynamic", "int8-dynamic-fused", "int8-static"}
    assert screen[art.report["choice"]]["passed"] and art.report["baked"]["bitwise_equal"]
    assert art.precision == "int8" and art.criteria == criteria_for("ort-cpu", "int8")
    with backend.load(art) as runner:
        res = validate({"int8": runner}, read_raw(ckpt), art.spec, art.criteria)
    assert res["int8"].passed
    assert 0 < res["int8"].max_abs_diff  # really quantized: not the float32 graph


def test_ort_cuda_does_not_claim_int8():
    from prumux_compile.engines.onnxruntime import OrtCudaBackend

    assert OrtCudaBackend.precisions == ("fp32",) and "int8" in registry.get("ort-cpu").precisions


@needs_openvino
def test_openvino_fp32_and_bf16(exported, tmp_path):
    """The IR is the artifact; fp32 meets the 1e-4 criteria; bf16 really runs in bf16 and meets its own; the
    deployment carries the openvino backend's parameters, and fp32 has no platform where the CPU defaults to bf16."""
    ckpt, onnx_path = exported
    backend = registry.get("openvino")
    raw = read_raw(ckpt)
    default = backend.default_inference_precision()
    from prumux_compile.export.inputs import realistic_inputs

    calib = realistic_inputs(16, SEQ, SPEC["vocab"], seed=5, type_vocab_size=2)
    for precision in backend.supported_precisions():
        art = backend.build(onnx_path, EngineConfig(precision=precision, threads=1, out_dir=tmp_path / precision,
                                                    options={"calibration": calib}))
        assert art.path.name == "model.xml" and (tmp_path / precision / "model.bin").is_file()
        assert art.report["effective_properties"]["INFERENCE_PRECISION_HINT"] == {
            "fp32": "f32", "bf16": "bf16", "int8": default}[precision]
        with backend.load(art) as runner:
            res = validate({precision: runner}, raw, art.spec, art.criteria)
        assert res[precision].passed, precision
        params = art.deployment.parameters
        assert params["INFERENCE_NUM_THREADS"] == "1" and params["NUM_STREAMS"] == "1"
        assert ("HINT_BF16" in params) == (precision == "bf16" or (precision == "int8" and default == "bf16"))
        if precision == "int8":  # NNCF: the encoder's GEMMs int8, everything outside the encoder kept
            assert art.report["int8"]["kept_fp"] and not any(n.startswith("/layers.")
                                                             for n in art.report["int8"]["kept_fp"])
            assert art.deployment.platform == "openvino" and res[precision].max_abs_diff > 1e-4
        elif precision == "bf16":
            assert art.deployment.platform == "openvino" and res[precision].max_abs_diff > 1e-4
        else:
            assert res[precision].max_abs_diff <= 1e-4
            assert (art.deployment.platform is None) == (default != "f32")
            assert (art.deployment.note is not None) == (default != "f32")


def test_openvino_unavailable_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    b = registry.get("openvino")
    assert b.available() == (False, "Python package 'openvino' is not installed (install the [openvino] extra)")
    assert b.supported_precisions() == ()
    with pytest.raises(EngineBuildError, match=r"openvino is unavailable.*\[openvino\] extra"):
        b.build("model.onnx")


@needs_openvino
def test_openvino_triton_config_checked_against_the_onnx_graph(exported, tmp_path):
    """The openvino repository: backend 'openvino', the IR and its weights, max_batch_size 0 (full-shape dims, no
    dynamic batching: the backend would pad batches into mux groups), the backend's own parameter names; the
    validator checks it against model.onnx and refuses batching or unknown parameters."""
    from prumux_compile.triton import write_repository
    from prumux_compile.triton.config import load_config
    from prumux_compile.triton.validate import validate_config

    _, onnx_path = exported
    art = registry.get("openvino").build(onnx_path, EngineConfig(precision="bf16", threads=2, out_dir=tmp_path / "ir"))
    repo = write_repository(tmp_path / "repo", name="m", model_path=art.path, platform="openvino",
                            interface_onnx=onnx_path, backend_parameters=art.deployment.parameters)
    assert sorted(p.name for p in (repo / "1").iterdir()) == ["model.bin", "model.xml"]
    text = (repo / "config.pbtxt").read_text()
    cfg = load_config(repo / "config.pbtxt")
    assert (cfg.backend, cfg.platform, cfg.max_batch_size) == ("openvino", "", 0)
    assert not cfg.HasField("dynamic_batching") and "max_batch_size 0" in text
    assert [list(i.dims) for i in cfg.input] == [[-1, -1]] * len(cfg.input)
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["HINT_BF16"] == "YES" and params["INFERENCE_NUM_THREADS"] == "2"
    assert params["prumux.num_instances"] == "2"
    assert validate_config(cfg, onnx_path) == []
    cfg.max_batch_size = 4
    cfg.parameters["ENFORCE_FP32"].string_value = "YES"
    problems = validate_config(cfg, onnx_path)
    assert any("openvino backend must not batch" in p for p in problems)
    assert any("'ENFORCE_FP32' is not an openvino backend parameter" in p for p in problems)


class _Fake(Backend):
    def __init__(self, name, precisions):
        self.name, self.precisions = name, precisions

    def available(self):
        return True, "fake"

    def build(self, compiled, config=None):  # pragma: no cover - never built here
        raise AssertionError

    def load(self, artifact):  # pragma: no cover
        raise AssertionError


@pytest.mark.parametrize("precisions, explicit, plan", [
    # default backend list, auto: each precision once, by the first backend that builds it, fp32 first
    (None, False, [("a", "fp32"), ("a", "int8"), ("b", "bf16")]),
    # "all": every pair
    (("all",), False, [("a", "fp32"), ("b", "fp32"), ("a", "int8"), ("b", "bf16")]),
    # named backends: each builds each wanted precision it can
    (None, True, [("a", "fp32"), ("b", "fp32"), ("a", "int8"), ("b", "bf16")]),
    (("int8", "fp32"), False, [("a", "fp32"), ("a", "int8")]),
    (("bf16",), True, [("b", "bf16")]),
])
def test_candidate_plan(monkeypatch, precisions, explicit, plan):
    monkeypatch.setitem(registry._TARGETS, "a", lambda: _Fake("a", ("fp32", "int8")))
    monkeypatch.setitem(registry._TARGETS, "b", lambda: _Fake("b", ("fp32", "bf16")))
    got, named = candidate_plan(["a", "b"], precisions, every_backend=explicit)
    assert got == plan and named == (precisions is not None and precisions != ("all",))


def test_candidate_plan_refuses_what_no_backend_builds(monkeypatch):
    monkeypatch.setitem(registry._TARGETS, "a", lambda: _Fake("a", ("fp32", "int8")))
    with pytest.raises(InputError, match=r"--precision bf16: no requested backend builds it here \(a builds fp32, "
                                         r"int8\).*--backend openvino"):
        candidate_plan(["a"], ("fp32", "bf16"))
    with pytest.raises(InputError, match="--precision fp8: expected"):
        candidate_plan(["a"], ("fp8",))


@pytest.mark.parametrize("mb, mp, expected", [
    (False, False, "n2_s0.50"), (False, True, "n2_s0.50@int8"), (True, False, "n2_s0.50@openvino"),
    (True, True, "n2_s0.50@openvino.bf16"),
])
def test_candidate_id(mb, mp, expected):
    backend, precision = ("openvino", "bf16") if mb else ("ort-cpu", "int8")
    assert candidate_id("n2_s0.50", backend, precision, mb, mp) == expected


def test_int8_criteria_catch_a_broken_engine_not_quantization_noise():
    """The int8 bound is 0.75 of the logit scale: 35 % noise passes, zeroed or sign-flipped logits fail."""
    from prumux_compile.validation import compare

    crit = criteria_for("ort-cpu", "int8")
    ref = np.array([[1.8, -0.4], [-1.1, 0.9], [0.2, 1.5]])
    noisy = (ref + 0.35 * 1.8 * np.array([[1, -1], [-1, 1], [1, -1]]) * 0.99).astype(np.float32)
    assert compare(noisy, ref, crit).within
    assert not compare(np.zeros_like(ref, dtype=np.float32), ref, crit).within
    assert not compare((-ref).astype(np.float32), ref, crit).within


def test_cpu_isa_flags_read_from_cpuinfo(tmp_path):
    from prumux_compile.bench.timing import cpu_isa_flags

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni fma\nflags : amx_tile\n")
    assert cpu_isa_flags(str(info)) == ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"]
    assert cpu_isa_flags(str(tmp_path / "missing")) is None
