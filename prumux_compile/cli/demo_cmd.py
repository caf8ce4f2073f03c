"""`prumux-compile demo-checkpoints OUT`: write the demo grid from the real MiniLM weights.

Only wires :func:`prumux_compile.demo.write_demo_grid`; torch is imported when the command runs, not
when ``--help`` is shown.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from prumux_compile.errors import InputError, PrumuxError


def _split(text: str, kind, what: str) -> tuple:
    try:
        return tuple(kind(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"--{what} {text!r}: expected a comma-separated list like "
                         f"{'1,2,5' if kind is int else '0,0.5,0.8'}") from None


@click.command("demo-checkpoints")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--nums", default="1,2,5", show_default=True, help="Multiplexing widths N, comma-separated.")
@click.option("--sparsities", default="0,0.5,0.8", show_default=True,
              help="Target CoFi sparsities in [0, 1), comma-separated.")
@click.option("--masked-forms", type=click.Choice(["all", "some", "none"]), default="some", show_default=True,
              help="Also write full-weights + zs.pt twins of pruned checkpoints: all, the N=2 ones, or none.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the randomly initialised heads.")
def demo_checkpoints_cmd(out: Path, nums: str, sparsities: str, masked_forms: str, seed: int) -> None:
    """Write upstream-format demo checkpoints pruned from all-MiniLM-L6-v2 into OUT (a new folder)."""
    try:
        from prumux_compile.demo import write_demo_grid

        grid = write_demo_grid(out, _split(nums, int, "nums"), _split(sparsities, float, "sparsities"),
                               masked_forms, seed)
    except PrumuxError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    for c in grid["checkpoints"]:
        click.echo(f"{c['name']:<16} N={c['num_instances']:<2} {c['family']:<18} target={c['target_sparsity']:.2f} "
                   f"sparsity={c['sparsity']:.4f} heads={c['heads_per_layer']} d'={c['hidden_width']}")
    click.echo(f"wrote {len(grid['checkpoints'])} checkpoints and grid.json to {out}")
