"""``prumux-compile export``: files written on success, atomic refusal/failure paths and their exit codes."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from prumux_compile import reference
from prumux_compile.cli.main import cli
from prumux_compile.demo.synthetic import SynthSpec, write_checkpoint

SPEC = dict(family="prumux_compressed", num_instances=2, num_layers=2, hidden=32, heads=4, ffn=32, vocab=128,
            max_pos=64, heads_kept=[[0, 1, 2, 3], [2]])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "ckpt"
    write_checkpoint(path, SynthSpec(**SPEC))
    return path


def _invoke(*args):
    return CliRunner().invoke(cli, ["export", *map(str, args)])


def _leftovers(parent, name):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def test_success_writes_the_artifacts(ckpt, tmp_path):
    out = tmp_path / "out"
    result = _invoke(ckpt, "-o", out, "--seq-len", 16, "--threads", 1)
    assert result.exit_code == 0, result.output
    for name in ("model.onnx", "model.ort.onnx", "model.optimized.onnx", "validation.json", "passes.json",
                 "export.json", "candidate.json"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "validation.json").read_text())
    assert doc["passed"] is True and set(doc["artifacts"]) == {"model.onnx", "model.ort.onnx", "model.optimized.onnx"}
    passes = json.loads((out / "passes.json").read_text())
    assert [p["name"] for p in passes][:2] == ["fold-masks", "prune-hidden"]
    assert "inputs ignored by this family (accepted, unused): attention_mask, token_type_ids" in result.stdout
    assert _leftovers(tmp_path, "out") == []


def test_existing_output_is_refused_and_untouched(ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _invoke(ckpt, "-o", out)
    assert result.exit_code == 2
    assert "already exists; pass --force" in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert _leftovers(tmp_path, "out") == []


def test_output_below_a_file_is_refused(ckpt, tmp_path):
    (tmp_path / "somefile").write_text("mine")
    result = _invoke(ckpt, "-o", tmp_path / "somefile" / "sub")
    assert result.exit_code == 2
    assert f"its parent {tmp_path / 'somefile'} is a file, not a folder" in result.stderr
    assert (tmp_path / "somefile").read_text() == "mine"


@pytest.mark.parametrize("make_bad, message", [
    (lambda p: p, "no such checkpoint directory"),
    (lambda p: (p.mkdir(), p)[1], "config.json"),
])
def test_bad_checkpoint_exits_2_without_output(make_bad, message, tmp_path):
    bad = make_bad(tmp_path / "bad")
    out = tmp_path / "out"
    result = _invoke(bad, "-o", out)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and _leftovers(tmp_path, "out") == []


@pytest.mark.parametrize("args, message", [(["--opset", 16], "--opset"), (["--seq-len", 1], "--seq-len")])
def test_bad_options_are_usage_errors(args, message, ckpt, tmp_path):
    result = _invoke(ckpt, "-o", tmp_path / "out", *args)
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "out").exists()


def test_checkpoint_inside_output_is_refused(ckpt):
    result = _invoke(ckpt, "-o", ckpt.parent, "--force")
    assert result.exit_code == 2 and "lies inside the output" in result.stderr
    assert (ckpt / "config.json").is_file()


def test_validation_failure_exits_3_and_writes_no_output(ckpt, tmp_path, monkeypatch):
    real = reference.forward
    monkeypatch.setattr(reference, "forward", lambda *a, **k: real(*a, **k) + 1.0)
    out = tmp_path / "out"
    result = _invoke(ckpt, "-o", out, "--seq-len", 16, "--threads", 1)
    assert result.exit_code == 3, result.output
    last = result.stderr.strip().splitlines()[-1]
    # 6 cases: batches {1, N-1, N, 2N+1} = {1, 2, 5} x lengths {7, 16}
    assert last.startswith("error: validation against the reference failed: model.onnx: 6/6 cases failed")
    assert "FAIL" in result.stderr  # the per-case table
    assert not out.exists()
    assert _leftovers(tmp_path, "out") == []


def test_failed_forced_export_leaves_the_previous_output(ckpt, tmp_path, monkeypatch):
    """--force replaces OUT only after success: a failure late in the export (files already written into the
    temporary directory) leaves the previous OUT byte for byte."""
    from prumux_compile.errors import ValidationError
    from prumux_compile import export_job as pipeline

    def failing(checkpoint, dest, **options):
        (dest / "model.onnx").write_bytes(b"partial")
        raise ValidationError("validation against the reference failed: model.onnx: 1/1 cases failed")

    monkeypatch.setattr(pipeline, "export_into", failing)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous export")
    result = _invoke(ckpt, "-o", out, "--force")
    assert result.exit_code == 3
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "previous export"
    assert _leftovers(tmp_path, "out") == []


def test_forced_export_replaces_the_previous_output(ckpt, tmp_path, monkeypatch):
    from prumux_compile import export_job as pipeline

    real = pipeline.export_into
    calls = []
    monkeypatch.setattr(pipeline, "export_into", lambda *a, **k: calls.append(k) or real(*a, **k))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous export")
    result = _invoke(ckpt, "-o", out, "--force", "--seq-len", 16, "--threads", 1, "--no-ort-optimize")
    assert result.exit_code == 0, result.output
    assert calls == [dict(seq_len=16, opset=17, threads=1, ort_optimize=False)]
    assert sorted(p.name for p in out.iterdir()) == ["candidate.json", "export.json", "model.onnx",
                                                     "model.optimized.onnx", "passes.json", "validation.json"]
    assert set(json.loads((out / "validation.json").read_text())["artifacts"]) == {"model.onnx",
                                                                                  "model.optimized.onnx"}
    assert _leftovers(tmp_path, "out") == []


def test_triton_serves_what_export_measured_and_chose(ckpt, tmp_path):
    """Finding 14: `triton EXPORT_DIR` serves the file export validated, measured and chose (its candidate.json, the
    record a build writes), with the session settings it was measured under — not model.onnx at ORT's defaults."""
    import hashlib

    out, repo = tmp_path / "out", tmp_path / "repo"
    assert _invoke(ckpt, "-o", out, "--seq-len", 16, "--threads", 1).exit_code == 0
    record = json.loads((out / "candidate.json").read_text())
    chosen = json.loads((out / "export.json").read_text())["engine"]["uses"]
    assert chosen == "model.optimized.onnx" and record["artifact"]["path"] == chosen
    sha = hashlib.sha256((out / chosen).read_bytes()).hexdigest()
    assert record["artifact"]["sha256"] == sha
    assert (record["id"], record["source"], record["num_instances"]) == ("ckpt", "export", 2)
    assert record["validation"]["passed"] is True and set(record["validation"]["files"]) == {
        "model.onnx", "model.ort.onnx", "model.optimized.onnx"}

    res = CliRunner().invoke(cli, ["triton", str(out), "-o", str(repo)])  # no --name: prumux_<checkpoint folder>
    assert res.exit_code == 0, res.output
    served = repo / "prumux_ckpt" / "1" / "model.onnx"
    assert hashlib.sha256(served.read_bytes()).hexdigest() == sha
    assert sha != hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    config = (repo / "prumux_ckpt" / "config.pbtxt").read_text()
    assert "level: 2" in config  # the saved optimised graph runs with every ORT optimisation disabled, as measured
    assert 'key: "intra_op_thread_count"' in config and 'string_value: "1"' in config
    res = CliRunner().invoke(cli, ["triton", str(out), "-o", str(tmp_path / "py"), "--backend", "python"])
    assert res.exit_code == 0, res.output
    py_config = (tmp_path / "py" / "prumux_ckpt" / "config.pbtxt").read_text()
    assert 'key: "prumux.graph_optimization_level"' in py_config and 'string_value: "disable_all"' in py_config

    # a changed artifact is refused like a build's (the record's sha256)
    (out / chosen).write_bytes((out / "model.onnx").read_bytes())
    res = CliRunner().invoke(cli, ["triton", str(out), "-o", str(tmp_path / "r2")])
    assert res.exit_code == 2 and "the file changed after it was measured" in res.stderr


def test_a_failed_export_writes_no_candidate_record(ckpt, tmp_path, monkeypatch):
    """export_into (non-atomic) leaves validation.json for inspection but no candidate.json to serve."""
    from prumux_compile import export_job, validation
    from prumux_compile.errors import ValidationError

    def broken(*args, **kwargs):
        res = validation.validate(*args, **kwargs)
        for r in res.values():
            r.cases[0].passed = False
        return res

    monkeypatch.setattr(export_job, "validate", broken)
    with pytest.raises(ValidationError):
        export_job.export_into(ckpt, tmp_path, seq_len=16, threads=1)
    assert (tmp_path / "validation.json").is_file() and not (tmp_path / "candidate.json").exists()
