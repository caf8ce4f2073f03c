"""`prumux-compile cache`: lists entries with sizes and the total, cleans all or by age, never touches folders
it did not write; and the cache `build` fills is the one it lists."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from prumux_compile.cache import clean, human_size, list_entries, parse_age
from prumux_compile.cli.main import cli

DAY = 86400.0
#: entry folders are named by a 24-hex-digit cache key (anything else is foreign)
A, B = "a" * 24, "b" * 24


def _entry(root: Path, key: str, sizes: dict[str, int], age_s: float, cid: str | None = "c", now: float = None):
    d = root / key
    d.mkdir(parents=True)
    for name, size in sizes.items():
        (d / name).write_bytes(b"x" * size)
    if cid is not None:
        (d / "candidate.json").write_text(json.dumps({"id": cid, "checkpoint": f"/ckpts/{cid}", "backend": "ort-cpu",
                                                      "num_instances": 2, "sparsity": 0.5}))
    t = (now or time.time()) - age_s
    for p in [*d.rglob("*"), d]:
        os.utime(p, (t, t))
    return d


@pytest.fixture
def cache(tmp_path):
    now = time.time()
    root = tmp_path / "cache"
    _entry(root, A, {"model.onnx": 3000, "model.ort.onnx": 1000}, 10 * DAY, "old", now)
    _entry(root, B, {"model.onnx": 500}, 2 * 3600, "new", now)
    _entry(root, ".tmp-stale", {"model.onnx": 70}, 3 * DAY, None, now)  # left by a killed build
    _entry(root, ".tmp-live", {"model.onnx": 30}, 60, None, now)  # a build writing right now
    _entry(root, "photos", {"cat.jpg": 99}, 30 * DAY, None, now)  # not ours
    return root, now


def test_list_kinds_sizes_and_order(cache):
    root, now = cache
    entries = list_entries(root)
    got = [(e.key, e.kind) for e in entries]
    assert got == [(".tmp-live", "temporary"), (B, "entry"), (".tmp-stale", "temporary"), (A, "entry"),
                   ("photos", "foreign")]
    sizes = {e.key: e.size_bytes for e in entries}
    cand = len(json.dumps({"id": "old", "checkpoint": "/ckpts/old", "backend": "ort-cpu", "num_instances": 2,
                           "sparsity": 0.5}))
    assert sizes[A] == 4000 + cand and sizes["photos"] == 99 and sizes[".tmp-live"] == 30
    assert entries[1].info == {"id": "new", "checkpoint": "/ckpts/new", "backend": "ort-cpu", "num_instances": 2,
                               "sparsity": 0.5}


@pytest.mark.parametrize("older_than, removed", [
    (None, [B, ".tmp-stale", A]),  # everything ours except a temp folder a running build may own
    (DAY, [".tmp-stale", A]),
    (5 * DAY, [A]),  # the stale temp folder is younger than that
    (20 * DAY, []),
])
def test_clean_by_age(cache, older_than, removed):
    root, now = cache
    plan = clean(root, older_than_s=older_than, dry_run=True, now=now)
    assert [e.key for e in plan] == removed
    assert sorted(p.name for p in root.iterdir()) == [".tmp-live", ".tmp-stale", A, B, "photos"]
    done = clean(root, older_than_s=older_than, now=now)
    assert [e.key for e in done] == removed
    left = sorted(p.name for p in root.iterdir())
    assert left == sorted({".tmp-live", ".tmp-stale", A, B, "photos"} - set(removed))
    assert (root / "photos" / "cat.jpg").is_file()


@pytest.mark.parametrize("text, seconds", [("7d", 7 * DAY), ("12h", 43200.0), ("30m", 1800.0), ("45s", 45.0),
                                           ("2w", 14 * DAY), ("3", 3 * DAY), ("1.5h", 5400.0)])
def test_parse_age(text, seconds):
    assert parse_age(text) == seconds


@pytest.mark.parametrize("text", ["", "-1d", "7 days", "d", "1y"])
def test_parse_age_refuses(text):
    from prumux_compile.errors import InputError

    with pytest.raises(InputError, match="expected a number"):
        parse_age(text)


@pytest.mark.parametrize("n, text", [(0, "0 B"), (999, "999 B"), (1500, "1.5 kB"), (152_300_000, "152.3 MB"),
                                     (1_600_000_000, "1.60 GB")])
def test_human_size(n, text):
    assert human_size(n) == text


def test_cli_list_and_clean(cache):
    root, _ = cache
    res = CliRunner().invoke(cli, ["cache", "--cache-dir", str(root)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == f"cache: {root}"
    ours = sum(e.size_bytes for e in list_entries(root) if e.kind != "foreign")
    assert lines[-1].startswith(f"total: 2 entries, {human_size(ours)}")
    assert any("new (N=2, ort-cpu)" in line and "/ckpts/new" in line for line in lines)
    assert any(line.startswith("photos") and "left alone" in line for line in lines)

    res = CliRunner().invoke(cli, ["cache", "list", "--json", "--cache-dir", str(root)])
    doc = json.loads(res.output)
    assert doc["total_bytes"] == ours and len(doc["entries"]) == 5

    res = CliRunner().invoke(cli, ["cache", "clean", "--older-than", "1d", "--dry-run", "--cache-dir", str(root)])
    assert res.exit_code == 0 and "would free" in res.output and (root / A).exists()
    res = CliRunner().invoke(cli, ["cache", "clean", "--older-than", "1d", "--cache-dir", str(root)])
    assert res.exit_code == 0, res.output
    assert not (root / A).exists() and (root / B).exists()
    assert res.output.splitlines()[-1].startswith("freed ")

    res = CliRunner().invoke(cli, ["cache", "clean", "--older-than", "soon", "--cache-dir", str(root)])
    assert res.exit_code == 2 and "error: age 'soon'" in res.output


def test_cli_cache_that_is_a_file(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    res = CliRunner().invoke(cli, ["cache", "list", "--cache-dir", str(f)])
    assert res.exit_code == 2 and "is a file" in res.output


def test_cache_root_default(monkeypatch, tmp_path):
    from prumux_compile.cache import cache_root

    monkeypatch.setenv("PRUMUX_CACHE_DIR", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env" and cache_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("PRUMUX_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "prumux-compile"


def _tiny_build(tmp_path: Path, cache: Path):
    """``build`` of one tiny synthetic checkpoint ``tmp_path/ck/a`` into ``tmp_path/out`` with cache ``cache``."""
    from prumux_compile.demo.synthetic import SynthSpec, write_checkpoint

    write_checkpoint(tmp_path / "ck" / "a", SynthSpec(vocab=200, max_pos=32, num_layers=1, hidden=16, heads=2,
                                                      ffn=24, num_labels=2, family="bert"))
    return CliRunner().invoke(cli, ["build", str(tmp_path / "ck"), "-o", str(tmp_path / "out"), "--cache-dir",
                                    str(cache), "--min-accuracy", "0", "--no-progress", "--seq-len", "16",
                                    "--batch-sizes", "2", "--rounds", "1", "--warmup", "0", "--threads", "1",
                                    "--precision", "fp32"])


def test_build_fills_the_cache_it_lists(tmp_path):
    cache = tmp_path / "cache"
    res = _tiny_build(tmp_path, cache)
    assert res.exit_code == 0, res.output
    (entry,) = list_entries(cache)
    assert entry.kind == "entry" and entry.info["id"] == "a"
    on_disk = sum(p.stat().st_size for p in entry.path.rglob("*") if p.is_file())
    assert entry.size_bytes == on_disk > 0
    res = CliRunner().invoke(cli, ["cache", "clean", "--cache-dir", str(cache)])
    assert res.exit_code == 0 and list_entries(cache) == []


def test_a_build_output_is_not_a_cache(tmp_path):
    """--cache-dir pointed at a build's OUT/candidates: its folders hold candidate.json but are not named by a cache
    key, so they are foreign and `clean` leaves them alone."""
    root = tmp_path / "out" / "candidates"
    for cid in ("n1_s0.00", "n2_s0.50", "deadbeef"):
        _entry(root, cid, {"model.onnx": 10}, 30 * DAY, cid)
    _entry(root, A, {"model.onnx": 10}, 30 * DAY, "cached")
    assert {e.key: e.kind for e in list_entries(root)} == {"n1_s0.00": "foreign", "n2_s0.50": "foreign",
                                                          "deadbeef": "foreign", A: "entry"}
    res = CliRunner().invoke(cli, ["cache", "--cache-dir", str(root), "clean"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in root.iterdir()) == ["deadbeef", "n1_s0.00", "n2_s0.50"]


def test_demo_training_jobs_are_listed_and_cleaned(tmp_path):
    """The demo's trained weights (``demo-train/<job>-<key>/`` with ``meta.json``) are the cache's too: listed with
    their job and size, counted in the total, removed by clean (by age as well); a folder in ``demo-train/``
    without ``meta.json`` is foreign and stays."""
    now = time.time()
    root = tmp_path / "cache"
    _entry(root, A, {"model.onnx": 1000}, 3 * DAY, "c1", now)
    job = _entry(root / "demo-train", "mux2-0123456789abcdef0123", {"state.pt": 4000}, 1 * DAY, None, now)
    (job / "meta.json").write_text(json.dumps({"key": "k", "metrics": {"job": "mux2", "num_instances": 2,
                                                                       "target_sparsity": 0.0,
                                                                       "validation_accuracy": 0.5953}}))
    os.utime(job / "meta.json", (now - DAY, now - DAY))
    stray = _entry(root / "demo-train", "notes", {"x.txt": 10}, 9 * DAY, None, now)
    kinds = {e.key: (e.kind, e.size_bytes) for e in list_entries(root)}
    assert kinds["demo-train/mux2-0123456789abcdef0123"][0] == "demo"
    assert kinds["demo-train/mux2-0123456789abcdef0123"][1] == 4000 + len((job / "meta.json").read_bytes())
    assert kinds["demo-train/notes"] == ("foreign", 10) and kinds[A][0] == "entry"
    res = CliRunner().invoke(cli, ["cache", "list", "--cache-dir", str(root)])
    assert res.exit_code == 0, res.output
    assert "demo training job mux2 (N=2, target s=0.0, val acc 0.5953)" in res.output
    assert "total: 1 entry and 1 demo training job" in res.output
    assert [e.key for e in clean(root, older_than_s=2 * DAY)] == [A]  # the 1-day-old job is kept
    assert job.is_dir()
    assert [e.key for e in clean(root)] == ["demo-train/mux2-0123456789abcdef0123"]
    assert not job.exists() and stray.is_dir()


def test_a_cache_that_cannot_be_written_costs_time_only(tmp_path, monkeypatch):
    """The disk fills while a finished candidate is stored: the build still succeeds, its report says the candidate
    was not cached and why, and no partial (temporary) folder is left in the cache."""
    import errno

    import prumux_compile.driver as driver

    real = driver._copy_files

    def fill_the_disk(src, dst):
        if Path(dst).name.startswith(".tmp-"):  # storing into the cache
            (Path(dst) / "model.onnx").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(dst) / "model.onnx"))
        return real(src, dst)

    monkeypatch.setattr(driver, "_copy_files", fill_the_disk)
    cache = tmp_path / "cache"
    res = _tiny_build(tmp_path, cache)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any(w.startswith("a: not stored in the build cache") and "No space left on device [ENOSPC]" in w
               for w in report["warnings"]), report["warnings"]
    assert list(cache.iterdir()) == []
