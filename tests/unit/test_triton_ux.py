"""Triton repositories from a new user's side: the model name comes from a candidate folder's candidate.json,
`serve` refuses repositories its local server cannot load (with the command that makes a servable one), and the
sequence-length limit — which Triton's dims cannot express — is a config parameter, a comment in config.pbtxt and
a clear refusal in the Python-backend model.py."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as pb2

from prumux_compile.cli.main import cli
from prumux_compile.triton import write_repository

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest_triton import make_toy_onnx, toy_feeds, toy_reference  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_triton import _fake_pb_utils  # noqa: E402


def _candidate(tmp_path: Path, cid: str, **meta) -> Path:
    folder = tmp_path / "out" / "candidates" / cid
    folder.mkdir(parents=True)
    make_toy_onnx(folder / "model.onnx", metadata={"prumux.num_instances": "2", **meta})
    deployment = {"platform": "onnxruntime_onnx", "instance_kind": "KIND_CPU", "model_file": "model.onnx",
                  "graph_optimization_level": "all"}
    (folder / "candidate.json").write_text(json.dumps({"id": cid, "num_instances": 2, "backend": "ort-cpu",
                                                       "artifact": {"path": "model.onnx", "deployment": deployment}}))
    return folder


@pytest.mark.parametrize("source, extra, want", [
    ("folder", [], "prumux_n2_s0_50"),
    ("model", [], "prumux_n2_s0_50"),  # a model.onnx with candidate.json beside it
    ("candidate.json", [], "prumux_n2_s0_50"),
    ("folder", ["--name", "mine"], "mine"),
])
def test_triton_names_a_candidate_folder_after_its_id(tmp_path, source, extra, want):
    folder = _candidate(tmp_path, "n2_s0.50")
    src = {"folder": folder, "model": folder / "model.onnx", "candidate.json": folder / "candidate.json"}[source]
    res = CliRunner().invoke(cli, ["triton", str(src), "-o", str(tmp_path / "repo"), *extra])
    assert res.exit_code == 0, res.output
    assert [p.name for p in (tmp_path / "repo").iterdir()] == [want]


@pytest.mark.parametrize("content, words", [
    (None, "--name is required when SOURCE is a model file without a candidate.json"),
    ("{not json", "cannot read the candidate record"),
    ('{"num_instances": 2}', "not a build's candidate record (no id or no artifact record"),
])
def test_triton_without_a_usable_candidate_json_needs_name(tmp_path, content, words):
    folder = _candidate(tmp_path, "x")
    if content is None:
        (folder / "candidate.json").unlink()
    else:
        (folder / "candidate.json").write_text(content)
    res = CliRunner().invoke(cli, ["triton", str(folder), "-o", str(tmp_path / "repo")])
    assert res.exit_code == 2 and words in res.output
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("backends, refused", [
    (["onnxruntime"], ["m0 (onnxruntime)"]),
    (["python", "onnxruntime"], ["m1 (onnxruntime)"]),
    (["python"], []),
])
def test_serve_refuses_models_the_local_server_cannot_load(tmp_path, backends, refused, monkeypatch):
    import prumux_compile.triton.server as server

    repo = tmp_path / "repo"
    model = make_toy_onnx(tmp_path / "m.onnx", metadata={"prumux.num_instances": "2"})
    for i, backend in enumerate(backends):
        write_repository(repo, name=f"m{i}", model_path=model, backend=backend)
    started = []

    class FakeServer:  # stands in for tritonserver: records that serving was attempted
        def __init__(self, *a, **k):
            started.append(a)

        def start(self):
            raise KeyboardInterrupt  # stop at once, like Ctrl-C

        def stop(self):
            pass

    monkeypatch.setattr(server, "TritonServer", FakeServer)
    res = CliRunner().invoke(cli, ["serve", str(repo)])
    if refused:
        assert res.exit_code == 2 and started == []
        line = res.output.strip()
        assert line.count("\n") == 0 and line.startswith(f"error: {repo}: {refused[0]} needs Triton's onnxruntime")
        assert "has only the Python backend" in line
        fix = line.split("Write a servable repository with: ")[1].split(" (or serve")[0]
        # the command it prints works and makes a repository serve accepts
        args = fix.split()[1:]
        assert args[:2] == ["triton", str(repo / refused[0].split()[0] / "1" / "model.onnx")]
        made = CliRunner().invoke(cli, args)
        assert made.exit_code == 0, made.output
        fixed_repo = Path(args[args.index("-o") + 1])
        from prumux_compile.cli.serve_cmd import unservable_models

        assert unservable_models(fixed_repo) is None
    else:
        assert started and res.exit_code == 0, res.output


def test_serve_empty_repository(tmp_path):
    (tmp_path / "repo").mkdir()
    res = CliRunner().invoke(cli, ["serve", str(tmp_path / "repo")])
    assert res.exit_code == 2 and "no model in this repository" in res.output


# ------------------------------------------------------------------------------------------------ sequence bound


@pytest.mark.parametrize("backend, refusal", [("python", "model.py refuses"), ("onnxruntime", "fails inside ONNX")])
def test_config_says_what_bounds_the_sequence(tmp_path, backend, refusal):
    model = make_toy_onnx(tmp_path / "m.onnx", metadata={"prumux.num_instances": "2", "prumux.max_seq_len": "8"})
    d = write_repository(tmp_path / "repo", name="m", model_path=model, backend=backend)
    text = (d / "config.pbtxt").read_text()
    cfg = text_format.Parse(text, pb2.ModelConfig())  # the comment is valid text format
    assert cfg.parameters["prumux.max_seq_len"].string_value == "8"
    assert [list(i.dims) for i in cfg.input] == [[-1]] * 3  # Triton cannot bound -1: the comment says so
    head = [line for line in text.splitlines() if line.startswith("#")]
    assert head and "cannot bound" in head[0] and "up to 8 tokens" in head[0]
    assert refusal in " ".join(head)


def test_no_comment_without_a_known_bound(tmp_path):
    model = make_toy_onnx(tmp_path / "m.onnx", metadata={"prumux.num_instances": "2"})
    d = write_repository(tmp_path / "repo", name="m", model_path=model)
    text = (d / "config.pbtxt").read_text()
    assert not text.startswith("#") and "prumux.max_seq_len" not in text


@pytest.mark.parametrize("where", ["config", "onnx-metadata"])
def test_python_model_refuses_sequences_longer_than_the_limit(tmp_path, monkeypatch, where):
    model = make_toy_onnx(tmp_path / "m.onnx", metadata={"prumux.num_instances": "2", "prumux.max_seq_len": "8"})
    d = write_repository(tmp_path / "repo", name="m", model_path=model, backend="python")
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    spec = importlib.util.spec_from_file_location("emitted_model_seq", d / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = text_format.Parse((d / "config.pbtxt").read_text(), pb2.ModelConfig())
    if where == "onnx-metadata":  # an older config without the parameter: the model's own metadata bounds it
        del cfg.parameters["prumux.max_seq_len"]
    m = module.TritonPythonModel()
    m.initialize({"model_config": json_format.MessageToJson(cfg, preserving_proto_field_name=True)})
    assert m.max_seq_len == 8
    ok, too_long, also_ok = toy_feeds(2, 8, seed=1), toy_feeds(2, 9, seed=2), toy_feeds(4, 3, seed=3)
    responses = m.execute([ok, too_long, also_ok])
    assert responses[1].error == ("sequence length 9 exceeds 8 tokens, the longest this model accepts "
                                  "(prumux.max_seq_len: the compiled length of a multiplexed model, else its position "
                                  "embeddings); truncate the input to 8 tokens")
    for f, r in ((ok, responses[0]), (also_ok, responses[2])):
        assert r.error is None
        np.testing.assert_allclose(r.output_tensors[0].as_numpy(), toy_reference(f), atol=1e-5, rtol=0)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_serve_stops_cleanly_with_exit_0_on_a_stop_signal(tmp_path, monkeypatch, signame):
    """Finding 17b: for `serve`, a service manager's stop (SIGTERM / SIGHUP) is a normal shutdown like Ctrl-C: the
    server is stopped and the command exits 0 (not 143 / 130 as the other commands; README "Exit codes")."""
    import os
    import signal

    import prumux_compile.triton.server as server

    repo = tmp_path / "repo"
    write_repository(repo, name="m", model_path=make_toy_onnx(tmp_path / "m.onnx",
                                                              metadata={"prumux.num_instances": "2"}),
                     backend="python")
    events = []

    class FakeServer:  # stands in for tritonserver
        http_url, grpc_url = "http://127.0.0.1:8000", "127.0.0.1:8001"

        def __init__(self, *a, **k):
            pass

        def start(self):
            events.append("start")

        def wait_ready(self, timeout):
            os.kill(os.getpid(), getattr(signal, signame))  # the stop arrives while serving
            for _ in range(100):  # delivered at the next bytecode boundary
                pass

        def stop(self):
            events.append("stop")

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    monkeypatch.setattr(server, "TritonServer", FakeServer)
    # Ctrl-C as an interactive Python has it, even when the test runner was started with SIGINT ignored (a
    # background job of a shell without job control)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        res = CliRunner().invoke(cli, ["serve", str(repo)])
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert res.exit_code == 0, res.output
    assert events == ["start", "stop"]
    assert {s: signal.getsignal(s) for s in before} == before  # the handlers are put back
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "`serve` exits 0 on Ctrl-C, SIGTERM and SIGHUP" in readme
