"""The `prumux-compile` click group.

Each sub-command lives in its own module under ``prumux_compile.cli`` and only wires library calls
together. Commands are imported lazily so that ``prumux-compile --help`` does not import torch.

Exit codes (DESIGN.md): 0 ok, 2 usage / bad input, 3 validation failed, 4 engine build failed,
5 no candidate meets the budget, 6 Triton config invalid.
"""
from __future__ import annotations

import importlib

import click

# command name -> "module:attribute"
_COMMANDS = {
    "inspect": "prumux_compile.cli.inspect_cmd:inspect_cmd",
    "demo-checkpoints": "prumux_compile.cli.demo_cmd:demo_checkpoints_cmd",
    "export": "prumux_compile.cli.export_cmd:export_cmd",
    "build": "prumux_compile.cli.build:build_cmd",
    "triton": "prumux_compile.cli.triton_cmd:triton_cmd",
    "serve": "prumux_compile.cli.serve_cmd:serve_cmd",
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


def _importable(target: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(target.split(":")[0]) is not None


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="prumux-compile")
def cli() -> None:
    """Compile multiplexed, structurally pruned BERT checkpoints (PruMUX) into verified engines."""


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="prumux-compile")


if __name__ == "__main__":  # pragma: no cover
    main()
