"""The CUDA engine (``torch-cuda``): a runtime around the compact model of prumux_compile.kernels.

Tests marked ``gpu`` need a CUDA device and are skipped without one (reason shown with ``-rs``). The unmarked
tests run the same runtime on the CPU (eager, PyTorch kernels): its numerics per family and precision judged by
the one comparator, the IR file, options, batch buckets/chunking and the backend's errors.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from prumux_compile.checkpoint import load, read_raw
from prumux_compile.engines.base import Compiled, EngineConfig
from prumux_compile.engines.torch_cuda import (CudaOptions, CudaRunner, TorchCudaBackend, compile_for_cuda,
                                               engine_model, load_ir, save_ir)
from prumux_compile.errors import EngineBuildError, InputError
from prumux_compile.export.inputs import realistic_inputs
from prumux_compile.export.spec import spec_for_ir
from prumux_compile.kernels import build_module
from prumux_compile.passes import compile_ir
from prumux_compile.validation import criteria_for, validate

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device (torch.cuda.is_available() is False)")
SEQ, V = 16, 1024
BASE = dict(vocab=V, max_pos=64, num_layers=3, hidden=32, heads=4, ffn=48)
FAMILIES = {
    "mux-index-pos": dict(family="prumux_compressed", num_instances=3, heads_kept=[[0, 2], [1], [3]],
                          ffn_kept=[list(range(20)), [], list(range(9))]),
    "masked-hidden": dict(family="prumux_masked", num_instances=2, heads_kept=[[0, 2], [], [1, 3]],
                          ffn_kept=[list(range(20)), [], list(range(40))], hidden_kept=list(range(3, 32))),
    "index": dict(family="prumux_compressed", num_instances=3, demuxing_variant="index", heads_kept=[[0], [1, 2], [3]]),
    "mlp": dict(family="muxplm", num_instances=2, demuxing_variant="mlp"),
    "ortho": dict(family="prumux_compressed", num_instances=2, muxing_variant="random_ortho"),
    "legacy-demux": dict(family="muxplm", num_instances=2, legacy_demuxing=True),
    "cofi-soft": dict(family="cofi_masked", soft_masks=True, heads_kept=[[1], [0, 1, 2, 3], []],
                      ffn_kept=[[], list(range(10)), list(range(48))], hidden_kept=list(range(30))),
    "bert": dict(family="bert"),
}


def _engine(path, precision, device, **opts):
    ir, _ = compile_ir(load(path, seq_len=SEQ))
    backend = TorchCudaBackend(CudaOptions(device=device, **opts))
    out = path.parent / f"{path.name}-{precision}-engine"
    art = backend.build(Compiled(out / "model.onnx", spec_for_ir(ir), ir), EngineConfig(precision=precision,
                                                                                      out_dir=out))
    return art, backend.load(art)


def _validate(runner, raw, art, **kw):
    return validate({"engine": runner}, raw, art.spec, art.criteria, **kw)["engine"]


# ------------------------------------------------------------------------------------------------ CPU
CPU_CASES = [(name, "fp32") for name in FAMILIES] + [("mux-index-pos", "fp16"), ("cofi-soft", "fp16"),
                                                     ("bert", "bf16")]


@pytest.mark.parametrize("name,precision", CPU_CASES)
def test_cpu_engine_matches_reference(name, precision, synth_ckpt):
    """The runtime on the CPU, every family, judged by the comparator with the (torch-cuda, precision) criteria."""
    path = synth_ckpt(name, **{**BASE, **FAMILIES[name]})
    raw = read_raw(path)
    art, runner = _engine(path, precision, "cpu", graph_mode="eager")
    assert (art.precision, art.criteria) == (precision, criteria_for("torch-cuda", precision))
    assert art.deployment.platform is None and art.device == "cpu"
    res = _validate(runner, raw, art)
    bound = {"fp32": 1e-5, "fp16": 1e-2, "bf16": 6e-2}[precision]  # observed well below these
    assert all(c.finite and c.deterministic and c.inputs_unchanged and c.max_excess <= 0 for c in res.cases)
    assert res.max_abs_diff <= bound
    if precision == "fp32":
        assert res.passed and res.argmax_agreement == 1.0
    else:
        assert res.max_abs_diff > 1e-6  # really ran in reduced precision
    assert art.report["kernel_choice"] == {"mux": "torch", "demux": "torch", "attention": "sdpa"}
    for layer in load_ir(art.path).layers:  # align-dims ran: widths are multiples of 8
        if layer.attention is not None:
            assert (layer.attention.heads * layer.attention.head_size) % 8 == 0
        if layer.ffn is not None:
            assert layer.ffn.dims % 8 == 0


def test_ir_file_roundtrip(synth_ckpt, tmp_path):
    path = synth_ckpt("rt", **{**BASE, **FAMILIES["mux-index-pos"]})
    ir, _ = compile_for_cuda(load(path, seq_len=SEQ), align=8)
    again = load_ir(save_ir(ir, tmp_path / "model.engine-ir.pt"))
    assert again.history == ir.history and again.id2label == ir.id2label and again.seq_len == SEQ
    assert again.classifier[0].data_ptr() != ir.classifier[0].data_ptr()
    for a, b in zip(ir.layers, again.layers):
        assert a.index == b.index and a.out_rows == b.out_rows
        if a.attention is not None:
            assert a.attention.head_ids == b.attention.head_ids and a.attention.q_prescaled == b.attention.q_prescaled
            assert torch.equal(a.attention.wq, b.attention.wq)
    assert torch.equal(ir.mux.fused_scale, again.mux.fused_scale) and ir.demux.fused == again.demux.fused
    feeds = realistic_inputs(7, 12, V, seed=2)
    with torch.no_grad():
        x = [torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask", "token_type_ids")]
        assert torch.equal(build_module(ir)(*x), build_module(again)(*x))
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(InputError, match="not a readable IR file"):
        load_ir(tmp_path / "junk.pt")
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a prumux IR file"):
        load_ir(tmp_path / "other.pt")


def test_compile_for_cuda_single_check_gives_same_ir(synth_ckpt):
    path = synth_ckpt("cc", **{**BASE, **FAMILIES["masked-hidden"]})
    ir = load(path, seq_len=SEQ)
    a, rep_a = compile_for_cuda(ir, align=16)
    b, rep_b = compile_for_cuda(ir, align=16, check_each=False)
    assert a.history == b.history and "align-dims" in a.history and [r.name for r in rep_a] == [r.name for r in rep_b]
    for la, lb in zip(a.layers, b.layers):
        for sub in ("attention", "ffn"):
            x, y = getattr(la, sub), getattr(lb, sub)
            assert (x is None) == (y is None)
            if x is not None:
                assert all(torch.equal(getattr(x, k), getattr(y, k)) for k in vars(x) if isinstance(getattr(x, k),
                                                                                                      torch.Tensor))
    again, reports = compile_for_cuda(a, align=16)  # nothing left to do
    assert again is a and not any(r.changed for r in reports)


@pytest.mark.parametrize("options,match", [
    (dict(precision="int8"), "precision"), (dict(graph_mode="lazy"), "graph_mode"),
    (dict(mux_kernel="cuda"), "mux_kernel"), (dict(attention="flash"), "attention"),
    (dict(batch_sizes=(0,)), "buckets"), (dict(align=0), "align"), (dict(min_ratio=0), "min_ratio"),
])
def test_options_rejected(options, match):
    with pytest.raises(InputError, match=match):
        TorchCudaBackend(CudaOptions(**options))


@pytest.mark.parametrize("name,batch", [("mux-index-pos", 7), ("mux-index-pos", 13), ("index", 10), ("bert", 5)])
def test_cpu_runner_buckets_and_chunks(name, batch, synth_ckpt):
    """Batches above the largest bucket run in chunks of it (multiples of N keep mux groups intact); the
    result equals the compiled model on the whole batch (F18 in docs/field-faults.md: repeat-last padding)."""
    path = synth_ckpt(name, **{**BASE, **FAMILIES[name]})
    ir, _ = compile_ir(load(path, seq_len=SEQ))
    n = ir.num_instances
    model = engine_model(ir, "fp32")
    runner = CudaRunner(model, spec_for_ir(ir), CudaOptions(device="cpu", graph_mode="eager", batch_sizes=(n,)))
    assert runner.buckets == [n]
    feeds = realistic_inputs(batch, 12, V, seed=4)
    got = runner.run(feeds)["logits"]
    with torch.no_grad():
        want = build_module(ir)(*(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask",
                                                                        "token_type_ids"))).numpy()
    assert got.shape == (batch, ir.num_labels) and np.abs(got - want).max() <= 1e-5


def test_cpu_math_attention_matches_sdpa(synth_ckpt):
    path = synth_ckpt("m", **{**BASE, **FAMILIES["bert"]})
    ir, _ = compile_for_cuda(load(path, seq_len=SEQ))
    feeds = realistic_inputs(5, 12, V, seed=1)
    x = [torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask", "token_type_ids")]
    with torch.no_grad():
        a = engine_model(ir, "fp32", attention="sdpa")(*x)
        b = engine_model(ir, "fp32", attention="math")(*x)
    assert (a - b).abs().max().item() <= 1e-5


def test_engine_model_refuses_masked_ir(synth_ckpt):
    path = synth_ckpt("mk", **{**BASE, **FAMILIES["cofi-soft"]})
    with pytest.raises(InputError, match="still holds masks"):
        engine_model(load(path, seq_len=SEQ))


def test_build_needs_the_ir_and_loads_only_its_artifact(synth_ckpt, tmp_path):
    backend = TorchCudaBackend(CudaOptions(device="cpu", graph_mode="eager"))
    path = synth_ckpt("b", **{**BASE, **FAMILIES["bert"]})
    ir, _ = compile_ir(load(path, seq_len=SEQ))
    with pytest.raises(EngineBuildError, match="builds from the compiled IR"):
        backend.build(Compiled(tmp_path / "model.onnx", spec_for_ir(ir)), EngineConfig(out_dir=tmp_path))
    art = backend.build(Compiled(tmp_path / "model.onnx", spec_for_ir(ir), ir),
                        EngineConfig(out_dir=tmp_path / "engine", options={"attention": "math"}))
    assert art.backend == "torch-cuda" and art.path.name == "model.engine-ir.pt" and art.spec.family == "bert"
    assert art.report["kernel_choice"]["attention"] == "math"
    with backend.load(art) as runner:
        assert runner.run({"input_ids": np.full((2, 5), 101)})["logits"].shape == (2, 3)
        assert runner.model.kernels["attention"] == "math"
    with pytest.raises(InputError, match="loads only its IR artifact"):
        backend.load(art.using("plain"))
    with pytest.raises(InputError, match=r"unknown option\(s\) \['workspace_mb'\]"):
        backend.build(Compiled(tmp_path / "model.onnx", spec_for_ir(ir), ir), EngineConfig(options={"workspace_mb": 1}))


@pytest.mark.skipif(CUDA, reason="this machine has CUDA")
def test_unavailable_without_cuda():
    from prumux_compile.engines import registry

    ok, reason = TorchCudaBackend().available()
    assert not ok and "no CUDA device" in reason
    assert registry.get("torch-cuda").available() == (False, reason)
    with pytest.raises(EngineBuildError, match="unavailable"):
        TorchCudaBackend().build(Compiled("model.onnx", None, None))


# ------------------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", ["mux-index-pos", "index", "cofi-soft", "bert"])
def test_cuda_engine_fp32_and_fp16(name, synth_ckpt):
    path = synth_ckpt(name, **{**BASE, **FAMILIES[name]})
    raw = read_raw(path)
    for precision in ("fp32", "fp16"):
        art, runner = _engine(path, precision, "cuda", graph_mode="cuda-graph")
        assert art.device == "cuda" and art.criteria == criteria_for("torch-cuda", precision)
        res = _validate(runner, raw, art)
        assert all(c.passed for c in res.cases)
        if precision == "fp32":
            assert res.max_abs_diff <= 1e-3
        captured = runner.captures
        assert captured >= 1
        runner.run(realistic_inputs(1, 12, V, seed=0))  # bucket already captured: no new graph
        assert runner.captures == captured
        runner.close()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_graph_equals_eager(precision, synth_ckpt):
    """F18/F9 in docs/field-faults.md: batch 7 with N=2 (odd batch, bucket padding), padded rows: graph replay == eager, all finite."""
    path = synth_ckpt("g", **{**BASE, **dict(FAMILIES["mux-index-pos"], num_instances=2)})
    ir, _ = compile_for_cuda(load(path, seq_len=SEQ))
    model = engine_model(ir, precision, device="cuda")
    spec = spec_for_ir(ir)
    graph = CudaRunner(model, spec, CudaOptions(precision=precision, graph_mode="cuda-graph"))
    eager = CudaRunner(model, spec, CudaOptions(precision=precision, graph_mode="eager"))
    feeds = realistic_inputs(7, 12, V, seed=9)
    a, b = graph.run(feeds)["logits"], eager.run(feeds)["logits"]
    assert a.shape == (7, 3) and np.isfinite(a).all()
    assert np.abs(a - b).max() <= {"fp32": 1e-5, "fp16": 1e-2, "bf16": 5e-2}[precision]  # GEMM shapes differ


@pytest.mark.gpu
@needs_cuda
def test_cuda_engine_with_triton_kernels(synth_ckpt):
    pytest.importorskip("triton")
    path = synth_ckpt("t", **{**BASE, **FAMILIES["mux-index-pos"]})
    art, runner = _engine(path, "fp32", "cuda", mux_kernel="triton", demux_kernel="triton")
    assert art.report["kernel_choice"] == {"mux": "triton", "demux": "triton", "attention": "sdpa"}
    assert art.report["kernels"]["mux"]["max_abs_diff"] <= 1e-4
    res = _validate(runner, read_raw(path), art)
    assert res.passed and res.max_abs_diff <= 1e-3
