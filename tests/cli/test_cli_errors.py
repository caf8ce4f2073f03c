"""Every failure that is not one of ours reaches the user as one line and an exit code: unexpected exceptions
exit 1 with a hint to rerun with --debug (which shows the traceback), Ctrl-C 130, SIGTERM 143, file-system
errors 2 with the path and the OS reason. No traceback is printed without --debug."""
from __future__ import annotations

import errno

import pytest
from click.testing import CliRunner

from prumux_compile.cli.common import Terminated
from prumux_compile.cli.main import cli

# (command line, "module:attribute" the command calls first) — the failure is injected there
COMMANDS = {
    "inspect": (["inspect", "ckpt"], "prumux_compile.checkpoint:load"),
    "export": (["export", "ckpt", "-o", "out"], "prumux_compile.export_job:export_checkpoint"),
    "build": (["build", "ckpt", "-o", "out", "--no-progress"], "prumux_compile.driver:build"),
    "triton": (["triton", "m.onnx", "-o", "repo", "--name", "m"], "prumux_compile.triton:write_repository"),
    "demo-checkpoints": (["demo-checkpoints", "demo"], "prumux_compile.demo.grid:write_demo_grid"),
}

FAILURES = [
    # (exception, exit code, words the one line must contain)
    (RuntimeError("boom"), 1, ["internal error: RuntimeError: boom", "--debug"]),
    (ValueError("first line\nsecond line"), 1, ["internal error: ValueError: first line", "--debug"]),
    (AssertionError(), 1, ["internal error: AssertionError", "--debug"]),
    (KeyError("logits"), 1, ["internal error: KeyError: 'logits'", "--debug"]),
    (MemoryError(), 1, ["internal error: MemoryError", "--debug"]),
    (KeyboardInterrupt(), 130, ["interrupted (Ctrl-C)"]),
    (Terminated(), 143, ["stopped by SIGTERM"]),
    (OSError(errno.ENOSPC, "No space left on device", "out/model.onnx"), 2,
     ["out/model.onnx: No space left on device [ENOSPC]", "disk is full"]),
    (PermissionError(errno.EACCES, "Permission denied", "repo"), 2, ["repo: Permission denied [EACCES]"]),
    (OSError(errno.EROFS, "Read-only file system", "demo"), 2, ["demo: Read-only file system [EROFS]"]),
]


def _inject(monkeypatch, target: str, exc: BaseException) -> None:
    import importlib

    mod, attr = target.split(":")
    module = importlib.import_module(mod)

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(module, attr, fail)


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("exc, code, words", FAILURES, ids=lambda v: type(v).__name__ if isinstance(v, BaseException)
                         else None)
def test_failures_are_one_line_with_an_exit_code(command, exc, code, words, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    args, target = COMMANDS[command]
    if command == "triton":
        (tmp_path / "m.onnx").write_bytes(b"x")
    _inject(monkeypatch, target, exc)
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for w in words:
        assert w in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == (["m.onnx"] if command == "triton" else [])


@pytest.mark.parametrize("how", ["option", "env"])
def test_debug_shows_the_traceback(how, monkeypatch, tmp_path):
    """With --debug (or PRUMUX_DEBUG=1) the unexpected exception propagates, so Python prints its traceback."""
    _inject(monkeypatch, COMMANDS["inspect"][1], RuntimeError("boom"))
    args = ["--debug", "inspect", "ckpt"] if how == "option" else ["inspect", "ckpt"]
    env = {"PRUMUX_DEBUG": "1"} if how == "env" else {}
    res = CliRunner().invoke(cli, args, env=env)
    assert res.exit_code == 1
    assert isinstance(res.exception, RuntimeError) and str(res.exception) == "boom"


def test_debug_keeps_our_errors_one_line(monkeypatch):
    from prumux_compile.errors import CheckpointError

    _inject(monkeypatch, COMMANDS["inspect"][1], CheckpointError("ckpt: no config.json"))
    res = CliRunner().invoke(cli, ["--debug", "inspect", "ckpt"])
    assert (res.exit_code, res.output) == (2, "error: ckpt: no config.json\n")


def test_real_debug_traceback_in_a_process(tmp_path):
    """The console entry point: without --debug one line, with it Python's traceback (exit 1 both times)."""
    import subprocess
    import sys

    code = ("import sys, prumux_compile.checkpoint as c\n"
            "def boom(*a, **k): raise RuntimeError('boom')\n"
            "c.load = boom\n"
            "from prumux_compile.cli.main import main\n"
            "sys.argv = ['prumux-compile'] + sys.argv[1:]\n"
            "main()\n")
    for debug in (False, True):
        args = [sys.executable, "-c", code] + (["--debug"] if debug else []) + ["inspect", str(tmp_path)]
        done = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1
        assert ("Traceback" in done.stderr) is debug, done.stderr
        if not debug:
            assert done.stderr.strip().splitlines() == [
                "error: internal error: RuntimeError: boom (a bug in prumux-compile or a library it uses; "
                "rerun as 'prumux-compile --debug ...' for the traceback)"]


def test_usage_errors_keep_click_exit_2():
    res = CliRunner().invoke(cli, ["build", "x", "-o", "y", "--threads", "many"])
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_a_reader_that_closes_stdout_ends_the_command_quietly():
    """`prumux-compile predict ... | head -1`: the closed pipe is no error (exit 0, nothing on stderr)."""
    import subprocess
    import sys

    code = ("import click\n"
            "from prumux_compile.cli.common import handle_errors\n"
            "@click.command()\n"
            "@handle_errors\n"
            "def many():\n"
            "    for i in range(200000):\n"
            "        click.echo(f'line {i}')\n"
            "many()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"line 0\n"
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert (proc.returncode, err) == (0, b"")
