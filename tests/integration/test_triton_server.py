"""A real ``tritonserver`` (from the nvidia-pytriton wheel) serving the repository this package writes.

The Python-backend variant is served (that build has no onnxruntime backend). Checks: the server
becomes ready on loopback, served logits equal ONNX Runtime's on the same inputs (1e-5), a bounded
load of 8 concurrent clients x 100 requests of mixed batch sizes 1..2N+1 has zero errors, and stopping
the server ends its whole process group. The server is stopped in the fixture finalizer, also when a
test fails.

The repository also holds the ort-cpu engine of a compiled PruMUX checkpoint as the build writes it, once per
graph variant the engine may pick: its model file has the hash of the benchmarked artifact and the server
returns that engine's logits.
"""
from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from prumux_compile.triton import validate_config, write_repository
from prumux_compile.triton.server import TritonServer, probe

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest_triton import make_toy_onnx, toy_feeds, toy_reference  # noqa: E402

pytestmark = pytest.mark.triton_server

N = 2
CLIENTS, REQUESTS = 8, 100
MODELS = {"toy": None, "toy_seq16": 16}  # name -> fixed sequence length (None: dynamic)
#: model name -> the ort-cpu graph variant forced at build time (every variant the engine may pick)
MEASURED = {"measured_plain": "plain", "measured_noskip": "plain/no-skip-layernorm", "measured_fused": "fused"}
SEQ, VOCAB = 16, 256

http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("triton")
    for name, seq in MODELS.items():
        meta = {"prumux.num_instances": str(N)}
        if seq:
            meta["prumux.seq_len"] = str(seq)
        onnx_path = make_toy_onnx(root / f"{name}.onnx", seq_len=seq, metadata=meta)
        model_dir = write_repository(root / "repo", name=name, model_path=onnx_path, backend="python",
                                     max_queue_delay_us=200)
        assert validate_config(model_dir / "config.pbtxt", onnx_path) == []
    _measured_entries(root)
    return root


def _measured_entries(root: Path) -> None:
    """Compile a tiny N=2 checkpoint, build the ort-cpu engine once per forced graph variant and write each
    artifact into the repository as the build driver does (Python-backend variant)."""
    from prumux_compile.checkpoint import load
    from prumux_compile.driver import write_candidate_repository
    from prumux_compile.engines.base import Compiled, EngineConfig
    from prumux_compile.engines.onnxruntime import OrtCpuBackend
    from prumux_compile.export.onnx_export import export_onnx
    from prumux_compile.export.spec import spec_for_ir
    from prumux_compile.kernels import build_module
    from prumux_compile.passes import compile_ir
    from prumux_compile.demo.synthetic import SynthSpec, write_checkpoint

    write_checkpoint(root / "ckpt", SynthSpec(family="prumux_compressed", num_instances=N, num_layers=2, hidden=32,
                                              heads=4, ffn=32, vocab=VOCAB, max_pos=64, num_labels=3,
                                              heads_kept=[[0, 1, 2], [1, 3]]))
    ir, _ = compile_ir(load(root / "ckpt", seq_len=SEQ))
    spec = spec_for_ir(ir)
    export_onnx(build_module(ir), spec, root / "model.onnx")
    for name, variant in MEASURED.items():
        art = OrtCpuBackend().build(Compiled(root / "model.onnx", spec, ir),
                                    EngineConfig(threads=1, out_dir=root / name, options={"prefer": variant}))
        info = {"id": name, "num_instances": N, "artifact": art.describe()}
        (root / name / "candidate.json").write_text(json.dumps(info, default=str))
        write_candidate_repository(root / "repo", info, root / name, name=name, backend="python",
                                   max_queue_delay_us=200)
        MEASURED_ARTIFACTS[name] = art


MEASURED_ARTIFACTS: dict = {}


@pytest.fixture(scope="module")
def server(repo):
    reason = probe()
    if reason is not None:
        pytest.skip(f"tritonserver cannot start on this machine: {reason}")
    srv = TritonServer(repo / "repo", startup_timeout_s=60)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


def _infer(client, model: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    inputs = []
    for name, array in feeds.items():
        tensor = http.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer(model, inputs, outputs=[http.InferRequestedOutput("logits")])
    return result.as_numpy("logits")


def test_server_listens_on_loopback_and_models_are_ready(server):
    assert server.http_url.startswith("127.0.0.1:")
    client = http.InferenceServerClient(server.http_url)
    assert client.is_server_ready()
    for name in MODELS:
        assert client.is_model_ready(name)
        meta = client.get_model_metadata(name)
        assert [i["name"] for i in meta["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("batch", sorted({1, max(N - 1, 1), N, 2 * N + 1}))
def test_logits_equal_onnxruntime(server, repo, model, batch):
    seq = MODELS[model] or 11
    feeds = toy_feeds(batch, seq, seed=100 + batch)
    session = ort.InferenceSession(str(repo / f"{model}.onnx"), providers=["CPUExecutionProvider"])
    (expected,) = session.run(["logits"], feeds)
    got = _infer(http.InferenceServerClient(server.http_url), model, feeds)
    assert got.shape == (batch, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got, toy_reference(feeds), atol=1e-5, rtol=0)  # and the numpy oracle


@pytest.mark.parametrize("name", list(MEASURED))
def test_repository_serves_the_benchmarked_artifact(name, repo):
    """The model file is the measured artifact itself (same sha256 as recorded in candidate.json), with the
    session settings it was measured under."""
    info = json.loads((repo / name / "candidate.json").read_text())
    art = info["artifact"]
    assert art["path"] == "model.optimized.onnx" and art["build"]["choice"] == MEASURED[name]
    assert art["build"]["baked"]["bitwise_equal"] is True
    served = repo / "repo" / name / "1" / "model.onnx"
    assert hashlib.sha256(served.read_bytes()).hexdigest() == art["sha256"]
    assert hashlib.sha256((repo / name / art["path"]).read_bytes()).hexdigest() == art["sha256"]
    config = (repo / "repo" / name / "config.pbtxt").read_text()
    for key, value in (("prumux.graph_optimization_level", "disable_all"), ("prumux.intra_op_num_threads", "1"),
                       ("prumux.inter_op_num_threads", "1"), ("prumux.num_instances", str(N))):
        assert f'key: "{key}"\n  value {{\n    string_value: "{value}"' in config, key


@pytest.mark.parametrize("name", list(MEASURED))
def test_server_returns_the_engines_logits(server, name):
    """A real server answers with exactly what the ort-cpu engine (the benchmarked runner) computes."""
    from prumux_compile.engines.onnxruntime import OrtCpuBackend
    from prumux_compile.export.inputs import realistic_inputs

    client = http.InferenceServerClient(server.http_url)
    assert client.is_model_ready(name)
    art = MEASURED_ARTIFACTS[name]
    with OrtCpuBackend().load(art) as engine:
        for batch in sorted({1, N - 1, N, 2 * N + 1} - {0}):
            for seq in (SEQ, 9):
                feeds = realistic_inputs(batch, seq, VOCAB, seed=batch * 31 + seq)
                expected = engine.run(feeds)["logits"]
                got = _infer(client, name, feeds)
                assert got.shape == (batch, 3)
                np.testing.assert_array_equal(got, expected)


def test_bad_request_is_an_error_not_a_crash(server):
    client = http.InferenceServerClient(server.http_url)
    feeds = toy_feeds(2, 8, seed=7)  # 8 tokens for a model compiled for 16
    with pytest.raises(Exception, match="(?i)shape|dims|unexpected"):
        _infer(client, "toy_seq16", feeds)
    assert client.is_model_ready("toy_seq16")


def test_concurrent_load(server):
    """8 clients x 100 requests, batch sizes 1..2N+1, every answer checked against numpy."""
    latencies: list[float] = []
    errors: list[str] = []
    rows = [0]
    lock = threading.Lock()

    def worker(k: int) -> None:
        client = http.InferenceServerClient(server.http_url, connection_timeout=30, network_timeout=30)
        rng = np.random.default_rng(k)
        for i in range(REQUESTS):
            batch = int(rng.integers(1, 2 * N + 2))
            model = "toy" if i % 2 else "toy_seq16"
            feeds = toy_feeds(batch, MODELS[model] or int(rng.integers(4, 33)), seed=1000 * k + i)
            t0 = time.perf_counter()
            try:
                got = _infer(client, model, feeds)
            except Exception as exc:  # collected and asserted below
                with lock:
                    errors.append(f"client {k} request {i}: {type(exc).__name__}: {exc}")
                continue
            dt = time.perf_counter() - t0
            ok = got.shape == (batch, 3) and np.allclose(got, toy_reference(feeds), atol=1e-5, rtol=0)
            with lock:
                latencies.append(dt)
                rows[0] += batch
                if not ok:
                    errors.append(f"client {k} request {i}: wrong logits")

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(CLIENTS)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    wall = time.perf_counter() - start
    assert not any(t.is_alive() for t in threads), "load test clients did not finish within the bound"
    assert errors == []
    assert len(latencies) == CLIENTS * REQUESTS
    p50, p99 = np.percentile(np.array(latencies) * 1e3, [50, 99])
    print(
        f"\ntriton python backend, {CLIENTS} clients x {REQUESTS} requests (batch 1..{2 * N + 1}): "
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, {len(latencies) / wall:.0f} req/s, {rows[0] / wall:.0f} seq/s"
    )


def _live_group_members(pgid: int) -> list[int]:
    """Pids in process group ``pgid`` that are not zombies (from /proc/<pid>/stat)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            live.append(int(stat.parent.name))
    return live


def test_stop_ends_the_process_group(repo):
    if probe() is not None:
        pytest.skip("tritonserver cannot start on this machine")
    srv = TritonServer(repo / "repo", startup_timeout_s=60)
    try:
        srv.start()
        pid = srv.pid
        assert pid is not None and srv.is_ready()
    finally:
        srv.stop()
    assert srv.pid is None and not srv.is_ready()
    assert _live_group_members(pid) == []
    assert "Started HTTPService at 127.0.0.1" in srv.logs()
