"""The `prumux-compile` click group.

Each sub-command lives in its own module under ``prumux_compile.cli`` and only wires library calls
together. Commands are imported lazily so that ``prumux-compile --help`` does not import torch.

Exit codes (README "Commands"): 0 ok, 2 usage / bad input (file-system errors included), 3 validation failed, 4 engine
build failed, 5 no candidate meets the budget, 6 Triton config invalid, 7 candidates lost to cluster faults
(``build --executor ray``); 1 an unexpected error (one line; the
traceback with ``prumux-compile --debug``), 130 Ctrl-C, 143 SIGTERM (see :mod:`prumux_compile.cli.common`).
"""
from __future__ import annotations

import importlib

import click

from prumux_compile.cli.common import report_exception, sigterm_raises

# command name -> "module:attribute"
_COMMANDS = {
    "inspect": "prumux_compile.cli.inspect_cmd:inspect_cmd",
    "demo-checkpoints": "prumux_compile.cli.demo_cmd:demo_checkpoints_cmd",
    "export": "prumux_compile.cli.export_cmd:export_cmd",
    "build": "prumux_compile.cli.build:build_cmd",
    "triton": "prumux_compile.cli.triton_cmd:triton_cmd",
    "serve": "prumux_compile.cli.serve_cmd:serve_cmd",
    "predict": "prumux_compile.cli.predict_cmd:predict_cmd",
    "cache": "prumux_compile.cli.cache_cmd:cache_cmd",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx):  # noqa: D102
        return sorted(name for name, target in _COMMANDS.items() if _importable(target))

    def get_command(self, ctx, name):  # noqa: D102
        target = _COMMANDS.get(name)
        if target is None:
            return None
        mod, attr = target.split(":")
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name == mod:
                return None
            raise
        return getattr(module, attr)

    def invoke(self, ctx):
        """Run the sub-command; turn every failure into one line and an exit code (``cli.common``)."""
        with sigterm_raises():
            try:
                return super().invoke(ctx)
            except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
                raise
            except GeneratorExit:
                raise
            except BaseException as exc:  # noqa: BLE001 - every other failure gets one line and a code
                debug = bool(ctx.obj.get("debug")) if isinstance(ctx.obj, dict) else False
                code = report_exception(exc, debug=debug)
                ctx.exit(code)


def _importable(target: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(target.split(":")[0]) is not None


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="prumux-compile")
@click.option("--debug", is_flag=True, envvar="PRUMUX_DEBUG",
              help="Show the full traceback of an unexpected error (also: PRUMUX_DEBUG=1).")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Compile multiplexed, structurally pruned BERT checkpoints (PruMUX) into verified engines.

    Exit codes: 0 ok, 2 bad input or a file-system error, 3 validation failed, 4 engine build failed,
    5 no candidate meets the budget, 6 Triton config invalid, 7 candidates lost to cluster faults, 1 unexpected
    error, 130 Ctrl-C, 143 SIGTERM.
    """
    ctx.ensure_object(dict)["debug"] = debug


def main() -> None:
    """Console-script entry point."""
    try:
        cli(prog_name="prumux-compile")
    except SystemExit as done:
        if done.code in (130, 143):  # stopped by Ctrl-C / SIGTERM and cleaned up: a second signal must not cut
            import signal  # the exit short (the process would end by the signal, not with our exit code)

            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise


if __name__ == "__main__":  # pragma: no cover
    main()
