"""Engine registry, availability reasons, the ORT-CPU backend (fusion per layer, choice, sessions) and the
shared input checks."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from prumux_compile.checkpoint import read_raw
from prumux_compile.engines import registry
from prumux_compile.engines.base import Backend, EngineConfig, Runner, file_sha256, prepare_feeds
from prumux_compile.engines.onnxruntime import VARIANTS
from prumux_compile.errors import EngineBuildError, InputError
from prumux_compile.export.spec import make_spec
from prumux_compile.export_job import export_into
from prumux_compile.validation import criteria_for, validate
from prumux_compile.passes.onnx import ort_fuse
from prumux_compile.passes.onnx.ort_fusions import _match_layers
from prumux_compile.demo.synthetic import SynthSpec, write_checkpoint
from tests.conftest import make_inputs

SEQ = 16
#: F6 in docs/field-faults.md: heads kept per layer [4, 3, 0, 1] (the issue's [12, 7, 0, 3] at toy size).
HEADS = [[0, 1, 2, 3], [0, 2, 3], [], [1]]
EXPECTED_ATTENTION = [[0, 4], [1, 3], [3, 1]]
BASE = dict(num_layers=4, hidden=32, heads=4, ffn=32, vocab=128, max_pos=64, num_labels=3, heads_kept=HEADS)
#: name -> (SynthSpec fields, fused attention ops expected). The last layer computes queries for the rows the
#: demux / pooler reads only (trim-last-layer), so it fuses into MultiHeadAttention (query length != key length).
MODELS = {
    # fused attention nodes expected in total (the fusion emits Attention or MultiHeadAttention depending on
    # the exporter's graph shape; either carries the layer's own head count)
    "mux2": (dict(family="prumux_compressed", num_instances=2), 3),
    "cofi": (dict(family="cofi_compressed", ffn_kept=[list(range(32)), [], list(range(9)), list(range(32))]), 3),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """name -> (checkpoint dir, model.onnx) exported without ORT fusion (validated)."""
    cache = {}

    def get(name):
        if name not in cache:
            root = tmp_path_factory.mktemp(name)
            write_checkpoint(root / "ckpt", SynthSpec(**{**BASE, **MODELS[name][0]}))
            (root / "out").mkdir()
            export_into(root / "ckpt", root / "out", seq_len=SEQ, threads=1, ort_optimize=False)
            cache[name] = (root / "ckpt", root / "out" / "model.onnx")
        return cache[name]

    return get


@pytest.fixture(scope="module")
def built(plain, tmp_path_factory):
    """name -> Artifact built by ort-cpu (fusion + measured choice) into a fresh directory."""
    cache = {}

    def get(name):
        if name not in cache:
            _, onnx_path = plain(name)
            out = tmp_path_factory.mktemp(f"{name}-engine")
            cache[name] = registry.get("ort-cpu").build(onnx_path, EngineConfig(threads=1, out_dir=out, bench_rounds=3))
        return cache[name]

    return get


# ---------------------------------------------------------------------------------------------- registry
def test_registry_names_and_unknown_backend():
    assert registry.names() == ["openvino", "ort-cpu", "ort-cuda", "tensorrt", "torch-cuda"]
    with pytest.raises(InputError, match="unknown backend 'onnx-gpu'; registered: openvino, ort-cpu, ort-cuda"):
        registry.get("onnx-gpu")


def _has_cuda_provider() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.mark.parametrize("name, ok, reason, skip_if", [
    ("ort-cpu", True, "onnxruntime", lambda: False),
    ("ort-cuda", False, "no CUDAExecutionProvider", _has_cuda_provider),
    ("torch-cuda", False, "no CUDA device", torch.cuda.is_available),
    ("tensorrt", False, "'tensorrt' is not installed", lambda: False),
])
def test_availability_reports_a_reason(name, ok, reason, skip_if):
    if skip_if():
        pytest.skip("this machine has the device/package")
    got_ok, got_reason = registry.get(name).available()
    assert got_ok is ok
    assert reason in got_reason
    assert registry.availability()[name] == (got_ok, got_reason)


def test_unavailable_backend_refuses_to_build_with_exit_4(tmp_path):
    backend = registry.get("tensorrt")
    with pytest.raises(EngineBuildError, match="backend tensorrt is unavailable") as info:
        backend.build(tmp_path / "model.onnx")
    assert info.value.exit_code == 4


class _Echo(Backend):
    name = "echo"

    def available(self):
        return True, "always"

    def build(self, compiled, config=None):
        raise NotImplementedError

    def load(self, artifact):
        raise NotImplementedError


@pytest.mark.parametrize("target, ok, reason", [
    (_Echo, True, "always"),
    ("prumux_compile.engines.ghost:Ghost", False, "not implemented in this version"),
    ("no_such_package_xyz.engine:Engine", False, "'no_such_package_xyz' is not installed"),
])
def test_register_backends(target, ok, reason, monkeypatch):
    monkeypatch.setattr(registry, "_TARGETS", dict(registry._TARGETS))
    registry.register("extra", target)
    assert "extra" in registry.names()
    got_ok, got_reason = registry.get("extra").available()
    assert got_ok is ok and reason in got_reason


# ---------------------------------------------------------------------------------------------- ORT fusion / build
@pytest.mark.parametrize("name", list(MODELS))
def test_fusion_uses_each_layers_head_count(name, built):
    artifact = built(name)
    ops = ("Attention", "MultiHeadAttention")
    fused = onnx.load(str(artifact.files["fused"]))
    heads = [next(a.i for a in n.attribute if a.name == "num_heads") for n in fused.graph.node
             if n.domain == "com.microsoft" and n.op_type in ops]
    assert heads == [h for _, h in EXPECTED_ATTENTION]
    report = artifact.report["fusion"]
    assert report["expected_attention"] == EXPECTED_ATTENTION
    assert report["fused_attention"] == EXPECTED_ATTENTION
    assert report["unfused_layers"] == []
    assert sum(report["fused_ops"].get(op, 0) for op in ops) == MODELS[name][1]
    assert report["fused_ops"]["SkipLayerNormalization"] >= 1
    assert report["error"] is None
    assert artifact.files["fused"].name == "model.ort.onnx"


@pytest.mark.parametrize("name", list(MODELS))
def test_fused_artifact_still_validates(name, plain, built):
    ckpt, _ = plain(name)
    artifact = built(name)
    backend = registry.get("ort-cpu")
    raw = read_raw(ckpt)
    with backend.load(artifact.using("fused")) as fused, backend.load(artifact.using("plain")) as unfused, \
            backend.load(artifact) as deployed:
        results = validate({"fused": fused, "plain": unfused, "deployed": deployed}, raw, artifact.spec,
                           artifact.criteria)
    assert artifact.criteria == criteria_for("ort-cpu", "fp32") and artifact.criteria.atol == 1e-4
    assert all(r.passed for r in results.values())
    assert all(r.max_abs_diff <= 1e-4 for r in results.values())


def test_choice_is_the_measured_fastest_variant_baked_into_the_artifact(built):
    """The fastest variant's optimised graph is saved and IS the artifact: loaded with every optimisation off it
    gives the measured session's logits bit for bit; its hash is recorded; Triton gets that level."""
    artifact = built("mux2")
    timing = artifact.report["timing"]
    assert set(timing) == set(VARIANTS) == {"plain", "plain/no-skip-layernorm", "fused"}
    fastest = min(timing, key=lambda r: timing[r]["p50_ms"])
    role, disabled = VARIANTS[fastest]
    assert artifact.report["choice"] == fastest
    assert artifact.report["baked"] == {"source": artifact.files[role].name, "disabled_optimizers": list(disabled),
                                        "saved_at_level": "all", "loaded_at_level": "disable_all",
                                        "bitwise_equal": True}
    assert artifact.role == "optimized" and artifact.path.name == "model.optimized.onnx"
    assert artifact.sha256 == file_sha256(artifact.path)
    assert artifact.options == {"graph_optimization_level": "disable_all"}
    assert timing["plain"]["batch"] == 16 and timing["plain"]["seq"] == SEQ
    dep = artifact.deployment
    assert (dep.platform, dep.instance_kind, dep.graph_optimization_level, dep.intra_op_num_threads) == (
        "onnxruntime_onnx", "KIND_CPU", "disable_all", 1)
    backend = registry.get("ort-cpu")
    ids, mask, tt = make_inputs(5, SEQ, 128, seed=4)
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}
    from prumux_compile.engines.onnxruntime import OrtRunner

    with backend.load(artifact) as deployed, OrtRunner(artifact.files[role], artifact.spec, threads=1,
                                                       disabled_optimizers=disabled) as measured:
        assert deployed.graph_level == "disable_all" and deployed.disabled_optimizers == ()
        np.testing.assert_array_equal(deployed.run(feeds)["logits"], measured.run(feeds)["logits"])
    assert artifact.using("plain").options == {} and artifact.using("fused").options == {}


@pytest.mark.parametrize("prefer, optimize, source, timed", [
    ("plain", True, "model.onnx", None),
    ("fused", True, "model.ort.onnx", None),
    ("auto", False, "model.onnx", {"plain", "plain/no-skip-layernorm"}),
])
def test_requested_graph_and_no_optimize(prefer, optimize, source, timed, plain, tmp_path):
    _, onnx_path = plain("mux2")
    artifact = registry.get("ort-cpu").build(onnx_path, EngineConfig(threads=1, out_dir=tmp_path, bench_rounds=1,
                                                                     options={"prefer": prefer,
                                                                              "optimize": optimize}))
    assert artifact.role == "optimized" and artifact.report["baked"]["source"] == source
    assert ("fused" in artifact.files) is optimize
    assert (tmp_path / "model.ort.onnx").exists() is optimize
    assert (set(artifact.report["timing"]) if "timing" in artifact.report else None) == timed


@pytest.mark.parametrize("config, error, match", [
    (EngineConfig(options={"prefer": "fused", "optimize": False}), EngineBuildError, "needs optimize=True"),
    (EngineConfig(options={"prefer": "fastest"}), InputError, "prefer='fastest'"),
    (EngineConfig(options={"workspace_mb": 1}), InputError, r"unknown option\(s\) \['workspace_mb'\]"),
    (EngineConfig(precision="fp16"), EngineBuildError, "does not build fp16 engines"),
])
def test_bad_config_is_refused(config, error, match, plain, tmp_path):
    _, onnx_path = plain("mux2")
    with pytest.raises(error, match=match):
        registry.get("ort-cpu").build(onnx_path, config)


def test_runner_threads_context_manager_and_roles(built):
    artifact = built("mux2")
    with registry.get("ort-cpu").load(artifact) as runner:
        assert isinstance(runner, Runner)
        assert runner._session.get_session_options().intra_op_num_threads == 1
        ids, mask, tt = make_inputs(3, 9, 128, seed=2)
        out = runner.run({"input_ids": ids})
        assert out["logits"].shape == (3, 3) and out["logits"].dtype == np.float32
    with pytest.raises(InputError, match="closed"):
        runner.run({"input_ids": ids})
    with pytest.raises(InputError, match="no 'trt' graph"):
        artifact.using("trt")


def test_cuda_session_that_falls_back_to_the_cpu_is_refused(plain, monkeypatch):
    """ORT CUDA: fp32 asks for TF32 off, and a session whose CUDA provider is not active is an error, never a
    silent CPU run (checked with a stand-in session: this machine has no CUDA provider)."""
    import onnxruntime

    from prumux_compile.engines.onnxruntime import OrtCudaBackend, OrtRunner

    seen = {}

    class _Session:
        def __init__(self, path, sess_options=None, providers=None, disabled_optimizers=None):
            seen["providers"] = providers

        def get_providers(self):
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(onnxruntime, "InferenceSession", _Session)
    backend = OrtCudaBackend()
    _, onnx_path = plain("mux2")
    spec = make_spec(family="prumux_compressed", num_instances=2, num_labels=3, id2label={}, seq_len=SEQ,
                     max_seq_len=SEQ, vocab_size=128, head_size=8, layer_heads=[])
    with pytest.raises(EngineBuildError, match="did not activate CUDAExecutionProvider.*silent fallback"):
        OrtRunner(onnx_path, spec, providers=backend.providers, provider_options=backend.provider_options("fp32"))
    assert seen["providers"] == [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    assert backend.accelerators("fp32") == ({"name": "cuda", "parameters": {"use_tf32": "0"}},)
    assert set(backend.variants()) == {"plain", "fused"}  # only variants a Triton config can reproduce


@pytest.mark.parametrize("free, error", [(0, InputError), (1 << 40, EngineBuildError)])
def test_saving_the_optimised_graph_on_a_full_disk_names_the_path(plain, tmp_path, monkeypatch, free, error):
    """ONNX Runtime reports a full disk while saving the optimised graph as a bare protobuf error
    (docs/field-faults.md F27): with too little space where the graph goes it is an ENOSPC input error naming the path
    (exit 2); with space enough, the engine error it was."""
    import collections
    import shutil

    import onnxruntime

    from prumux_compile.engines.onnxruntime import _session

    def _fail(*a, **k):
        raise RuntimeError("[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Protobuf serialization failed.")

    _, onnx_path = plain("mux2")  # exported before the stand-ins
    monkeypatch.setattr(onnxruntime, "InferenceSession", _fail)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: collections.namedtuple("U", "total used free")(1, 1, free))
    with pytest.raises(error) as info:
        _session(onnx_path, threads=1, providers=["CPUExecutionProvider"], provider_options=None,
                 save_to=tmp_path / "model.optimized.onnx")
    if error is InputError:
        assert f"{tmp_path / 'model.optimized.onnx'}: No space left on device [ENOSPC]" in str(info.value)
    else:
        assert "Protobuf serialization failed" in str(info.value)


def test_fusion_tool_failure_is_reported_not_fatal(plain, tmp_path, monkeypatch):
    import onnxscript.rewriter.ort_fusions as fusions

    def broken(model, *a, **k):
        raise RuntimeError("rewriter exploded")

    monkeypatch.setattr(fusions, "optimize_for_ort", broken)
    _, onnx_path = plain("mux2")
    report = ort_fuse(onnx_path, tmp_path / "model.ort.onnx", layer_heads=[tuple(x) for x in EXPECTED_ATTENTION])
    assert report.error == "RuntimeError: rewriter exploded"
    assert (tmp_path / "model.ort.onnx").read_bytes() == onnx_path.read_bytes()
    assert report.fused_attention == [] and report.unfused_layers == [0, 1, 3]


@pytest.mark.parametrize("nodes, fused, unfused", [
    ([("a", 4), ("b", 3), ("c", 1)], [[0, 4], [1, 3], [3, 1]], []),
    ([("a", 4), ("c", 1)], [[0, 4], [3, 1]], [1]),
    ([("b", 3)], [[1, 3]], [0, 3]),
    ([], [], [0, 1, 3]),
])
def test_match_fused_nodes_to_layers(nodes, fused, unfused):
    assert _match_layers(nodes, [(0, 4), (1, 3), (3, 1)]) == (fused, unfused)


def test_wrong_head_count_is_an_engine_build_error():
    with pytest.raises(EngineBuildError, match="num_heads=2, but no remaining attention layer"):
        _match_layers([("a", 4), ("b", 2)], [(0, 4), (1, 3), (3, 1)])


# ---------------------------------------------------------------------------------------------- feeds
_SPEC = make_spec(family="prumux_compressed", num_instances=2, num_labels=3, id2label={}, seq_len=16,
                  max_seq_len=16, vocab_size=128, head_size=8, layer_heads=[])
_IDS = np.full((2, 4), 110, dtype=np.int64)


@pytest.mark.parametrize("feeds, message", [
    ({}, "lack 'input_ids'"),
    ({"input_ids": _IDS, "labels": _IDS}, r"unknown input\(s\) \['labels'\]"),
    ({"input_ids": _IDS.astype(np.float32)}, "expected an integer array"),
    ({"input_ids": _IDS[0]}, r"expected shape \[batch, sequence\]"),
    ({"input_ids": _IDS[:0]}, "empty batch"),
    ({"input_ids": _IDS, "attention_mask": _IDS[:, :3]}, "differs from input_ids"),
    ({"input_ids": np.full((2, 17), 110)}, "sequence length 17 exceeds the compiled length seq_len=16"),
    ({"input_ids": _IDS + 100}, r"ids must lie in \[0, 128\)"),
])
def test_prepare_feeds_refusals(feeds, message):
    with pytest.raises(InputError, match=message):
        prepare_feeds(feeds, _SPEC)


def test_prepare_feeds_defaults_and_no_writes():
    ids = _IDS.astype(np.int32)
    before = ids.copy()
    out = prepare_feeds({"input_ids": ids}, _SPEC)
    assert list(out) == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(a.dtype == np.int64 and a.shape == (2, 4) for a in out.values())
    assert out["attention_mask"].tolist() == [[1] * 4] * 2 and out["token_type_ids"].tolist() == [[0] * 4] * 2
    np.testing.assert_array_equal(ids, before)
