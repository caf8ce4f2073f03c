"""A run never destroys or misreads what it was given (findings of a fresh-user review).

* An output folder that holds (or is) an input is refused before anything is built, also through ``..`` and
  symbolic links: replacing OUT with ``--force`` would delete the checkpoints, the evaluation file or the cache.
* A recorded-accuracy table must cover every candidate: a candidate without a row would otherwise be scored by
  teacher agreement (1.0 for a copy of the baseline) and compared with recorded accuracies.
* Numeric options are refused before the first candidate is compiled, naming the flag.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from prumux_compile.cli.main import cli
from prumux_compile.demo.synthetic import SynthSpec, write_checkpoint

TINY = dict(family="bert", num_instances=1, vocab=128, max_pos=32, num_layers=1, hidden=16, heads=2, ffn=16)


def _ckpt(path: Path) -> Path:
    write_checkpoint(path, SynthSpec(**TINY))
    return path


def _build(args, tmp_path):
    return CliRunner().invoke(cli, ["build", *args, "--cache-dir", str(tmp_path / "cache"), "--no-progress"])


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.mark.parametrize("case", ["grid-as-out", "parent-via-dotdot", "symlink-to-grid", "eval-data-in-out",
                                  "cache-in-out", "table-in-out"])
def test_build_refuses_an_output_holding_its_inputs(tmp_path, case):
    grid = tmp_path / "grid"
    ckpt = _ckpt(grid / "a")
    before = _files(ckpt)
    extra: list[str] = []
    out = grid
    if case == "parent-via-dotdot":
        out = grid / "nowhere" / ".."
    elif case == "symlink-to-grid":
        out = tmp_path / "link"
        os.symlink(grid, out)
    elif case in ("eval-data-in-out", "cache-in-out", "table-in-out"):
        out = tmp_path / "out"
        out.mkdir()
        target = out / {"eval-data-in-out": "eval.tsv", "cache-in-out": "cache",
                        "table-in-out": "acc.csv"}[case]
        if case == "eval-data-in-out":
            target.write_text("sentence\tlabel\ngood\t1\n")
            extra = ["--eval-data", str(target)]
        elif case == "table-in-out":
            target.write_text("checkpoint,accuracy\na,0.9\n")
            extra = ["--accuracy-table", str(target)]
        else:
            extra = ["--cache-dir", str(target)]
    args = [str(grid), "-o", str(out), "--force", *extra]
    res = CliRunner().invoke(cli, ["build", *args, "--no-progress"] + ([] if case == "cache-in-out" else
                                                                       ["--cache-dir", str(tmp_path / "cache")]))
    assert res.exit_code == 2, res.output
    assert "lies inside the output" in res.output and res.output.count("\n") == 1
    assert _files(ckpt) == before  # nothing of the checkpoint was touched
    if case in ("eval-data-in-out", "table-in-out"):
        assert target.is_file()
    assert not (tmp_path / "cache").exists()  # refused before any candidate was built


@pytest.mark.parametrize("how", ["dotdot", "symlink"])
def test_export_refuses_an_output_that_is_its_checkpoint_by_another_path(tmp_path, how):
    ckpt = _ckpt(tmp_path / "ckpt")
    before = _files(ckpt)
    if how == "dotdot":
        (tmp_path / "sub").mkdir()
        source = tmp_path / "sub" / ".." / "ckpt"
    else:
        source = tmp_path / "link"
        os.symlink(ckpt, source)
    res = CliRunner().invoke(cli, ["export", str(source), "-o", str(ckpt), "--force"])
    assert res.exit_code == 2, res.output
    assert "lies inside the output" in res.output
    assert _files(ckpt) == before


@pytest.mark.parametrize("rows, expected", [
    ("a,0.9\n", "no accuracy recorded for b"),  # a candidate without a row
    ("a,0.9\nB,0.8\n", "no accuracy recorded for b"),  # names match exactly, not case-insensitively
    ("a,0.9\nb,0.8\nb,0.85\n", "checkpoint 'b' appears twice"),  # a row per checkpoint
])
def test_accuracy_table_must_cover_every_candidate(tmp_path, rows, expected):
    _ckpt(tmp_path / "grid" / "a")
    _ckpt(tmp_path / "grid" / "b")
    table = tmp_path / "acc.csv"
    table.write_text("checkpoint,accuracy\n" + rows)
    res = _build([str(tmp_path / "grid"), "-o", str(tmp_path / "out"), "--accuracy-table", str(table)], tmp_path)
    assert res.exit_code == 2, res.output
    assert expected in res.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("option, value, flag", [
    ("--seq-len", "1", "--seq-len 1: must be an integer >= 2"),
    ("--seq-len", "0", "--seq-len 0: must be an integer >= 2"),
    ("--threads", "0", "--threads 0: must be an integer >= 1"),
    ("--rounds", "0", "--rounds 0: must be an integer >= 1"),
    ("--warmup", "-1", "--warmup -1: must be an integer >= 0"),
    ("--eval-limit", "0", "--eval-limit 0: must be an integer >= 1"),
])
def test_build_options_refused_before_anything_is_built(tmp_path, option, value, flag):
    _ckpt(tmp_path / "a")
    res = _build([str(tmp_path / "a"), "-o", str(tmp_path / "out"), f"{option}={value}"], tmp_path)
    assert res.exit_code == 2, res.output
    assert flag in res.output
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("value", ["0", "-3"])
def test_inspect_refuses_a_sequence_length_below_one(tmp_path, value):
    res = CliRunner().invoke(cli, ["inspect", str(_ckpt(tmp_path / "a")), f"--seq-len={value}"])
    assert res.exit_code == 2 and "--seq-len" in res.output


# ------------------------------------------------------------------------------------------------ served = measured
FAST = ["--seq-len", "8", "--batch-sizes", "2", "--rounds", "1", "--warmup", "0", "--threads", "1", "--precision", "fp32"]
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(123)]


def _with_vocab(path: Path, order: list[str]) -> Path:
    """A tiny WordPiece vocabulary (128 tokens) beside the checkpoint: AutoTokenizer reads it with config.json."""
    (path / "vocab.txt").write_text("\n".join(order) + "\n")
    return path


def _artifact(out: Path, cid: str) -> tuple[Path, str]:
    import json

    info = json.loads((out / "candidates" / cid / "candidate.json").read_text())
    return out / "candidates" / cid / info["artifact"]["path"], info["artifact"]["sha256"]


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_changed_cache_entry_is_rebuilt_and_the_repository_gets_the_measured_file(tmp_path):
    import json

    _ckpt(tmp_path / "a")
    write_checkpoint(tmp_path / "other", SynthSpec(**{**TINY, "seed": 9}))
    res = _build([str(tmp_path / "a"), "-o", str(tmp_path / "out1"), *FAST], tmp_path)
    assert res.exit_code == 0, res.output
    other = _build([str(tmp_path / "other"), "-o", str(tmp_path / "out2"), *FAST], tmp_path)
    assert other.exit_code == 0, other.output
    art, sha = _artifact(tmp_path / "out1", "a")
    foreign, foreign_sha = _artifact(tmp_path / "out2", "other")
    assert foreign_sha != sha
    entry = next(p for p in (tmp_path / "cache").iterdir() if (p / art.name).is_file() and _sha(p / art.name) == sha)
    (entry / art.name).write_bytes(foreign.read_bytes())  # the cache now holds another model under this key

    res = _build([str(tmp_path / "a"), "-o", str(tmp_path / "out3"), *FAST], tmp_path)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out3" / "report.json").read_text())
    assert report["candidates"][0]["cached"] is False  # not reused: rebuilt and measured again
    served = next((tmp_path / "out3" / "model_repository").glob("*/1/model.onnx"))
    assert _sha(served) == report["candidates"][0]["artifact"]["sha256"] != foreign_sha
    first = json.loads((tmp_path / "out1" / "report.json").read_text())["candidates"][0]["artifact"]
    if first["build"]["choice"] == report["candidates"][0]["artifact"]["build"]["choice"]:
        assert _sha(served) == sha  # the ORT variant is chosen by timing; the same variant gives the same file


def test_triton_refuses_an_artifact_changed_after_it_was_measured(tmp_path):
    _ckpt(tmp_path / "a")
    write_checkpoint(tmp_path / "other", SynthSpec(**{**TINY, "seed": 9}))
    for name in ("a", "other"):
        assert _build([str(tmp_path / name), "-o", str(tmp_path / f"out_{name}"), *FAST], tmp_path).exit_code == 0
    art, sha = _artifact(tmp_path / "out_a", "a")
    foreign, _ = _artifact(tmp_path / "out_other", "other")
    art.write_bytes(foreign.read_bytes())
    for source in (tmp_path / "out_a" / "report.json", tmp_path / "out_a" / "candidates" / "a"):
        res = CliRunner().invoke(cli, ["triton", str(source), "-o", str(tmp_path / "repo"), "--backend", "python"])
        assert res.exit_code == 2, res.output
        assert "not the artifact candidate a was validated and measured with" in res.output
        assert f"model.optimized.onnx: sha256 {_sha(art)[:12]}... is not the recorded {sha[:12]}..." in res.output
        assert not (tmp_path / "repo" / "prumux_a").exists()


def test_a_changed_tokenizer_is_a_cache_miss(tmp_path):
    import json

    import numpy as np

    ckpt = _with_vocab(_ckpt(tmp_path / "a"), WORDS)
    eval_tsv = tmp_path / "eval.tsv"
    eval_tsv.write_text("sentence\tlabel\n" + "".join(f"w{i} w{i + 7} w{(i * 5) % 120}\t{i % 2}\n"
                                                      for i in range(12)))
    args = [str(ckpt), "--eval-data", str(eval_tsv), *FAST]
    assert _build([*args[:1], "-o", str(tmp_path / "o1"), *args[1:]], tmp_path).exit_code == 0
    _with_vocab(ckpt, WORDS[:5] + WORDS[5:][::-1])  # same words, other ids: other token ids for the same texts
    res = _build([*args[:1], "-o", str(tmp_path / "o2"), *args[1:]], tmp_path)
    assert res.exit_code == 0, res.output
    fresh = CliRunner().invoke(cli, ["build", *args[:1], "-o", str(tmp_path / "o3"), *args[1:], "--no-cache",
                                     "--no-progress"])
    assert fresh.exit_code == 0, fresh.output
    report = json.loads((tmp_path / "o2" / "report.json").read_text())
    assert report["candidates"][0]["cached"] is False
    got = np.load(tmp_path / "o2" / "candidates" / "a" / "predictions.npz")["logits"]
    want = np.load(tmp_path / "o3" / "candidates" / "a" / "predictions.npz")["logits"]
    old = np.load(tmp_path / "o1" / "candidates" / "a" / "predictions.npz")["logits"]
    # the predictions of the tokenizer now in the folder (to float rounding: each build picks ORT's graph variant,
    # plain or fused, by timing, and the two differ in the last bits)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert np.abs(got - old).max() > 1e-3  # ... which differ from the first tokenizer's


def test_pair_eval_data_on_a_one_row_token_type_table_is_refused_up_front(tmp_path):
    """Finding 16: sentence pairs give segment id 1; an N = 1 model with a one-row token-type table cannot take it.
    Refused before anything is built, naming the file, its pair columns, the checkpoint and the table's size."""
    from prumux_compile.driver import BuildOptions, _check_eval_data

    ckpt = tmp_path / "tv1"
    write_checkpoint(ckpt, SynthSpec(**{**TINY, "type_vocab_size": 1}))
    _with_vocab(ckpt, WORDS)
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("sentence1\tsentence2\tlabel\n" + "".join(f"w{i} w{i + 1}\tw{i + 2}\t{i % 2}\n" for i in range(6)))
    res = _build([str(ckpt), "-o", str(tmp_path / "out"), "--eval-data", str(pairs), *FAST], tmp_path)
    assert res.exit_code == 2, res.output
    line = res.output.strip().splitlines()[-1]
    assert line.startswith(f"error: eval data {pairs}: its sentence pairs (columns 'sentence1' + 'sentence2') give "
                           "segment ids up to 1")
    assert "checkpoint tv1 has a token-type table of 1 row(s)" in line
    assert not (tmp_path / "out").exists()
    assert [p for p in (tmp_path / "cache").glob("*") if p.is_dir()] == []  # no candidate was built

    # the same file is fine for a two-row table; single sentences are fine for one row
    ok = tmp_path / "tv2"
    write_checkpoint(ok, SynthSpec(**TINY))
    _with_vocab(ok, WORDS)
    _check_eval_data(BuildOptions(out=tmp_path / "o", eval_data=pairs, seq_len=8), ok, "classification")
    single = tmp_path / "single.tsv"
    single.write_text("sentence\tlabel\nw1 w2\t0\nw3\t1\n")
    _check_eval_data(BuildOptions(out=tmp_path / "o", eval_data=single, seq_len=8), ckpt, "classification")
