"""`prumux-compile demo-checkpoints OUT`: write the demo grid from the real MiniLM weights, with classifiers
fitted to the demo task (:mod:`prumux_compile.demo_task`) and its eval split in ``OUT/eval.tsv``.

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
@click.option("--fit-task/--no-fit-task", default=True, show_default=True,
              help="Fit each classifier to the demo sentiment task and write OUT/eval.tsv "
                   "(--no-fit-task keeps random classifiers).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="PyTorch threads while fitting (1 is fastest on a shared, busy machine).")
def demo_checkpoints_cmd(out: Path, nums: str, sparsities: str, masked_forms: str, seed: int,
                         fit_task: bool, threads: int) -> None:
    """Write upstream-format demo checkpoints pruned from all-MiniLM-L6-v2 into OUT (a new folder)."""
    try:
        from prumux_compile.demo import EVAL_FILE, write_demo_grid

        grid = write_demo_grid(out, _split(nums, int, "nums"), _split(sparsities, float, "sparsities"),
                               masked_forms, seed, fit_task=fit_task, fit_threads=threads,
                               progress=lambda msg: click.echo(msg, err=True))
    except PrumuxError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    for c in grid["checkpoints"]:
        probe = c.get("task_probe")
        fitted = (f" probe train/cv acc={probe['train_accuracy']:.3f}/{probe['cv_accuracy']:.3f}"
                  if probe else "")
        click.echo(f"{c['name']:<16} N={c['num_instances']:<2} {c['family']:<18} target={c['target_sparsity']:.2f} "
                   f"sparsity={c['sparsity']:.4f} heads={c['heads_per_layer']} d'={c['hidden_width']}{fitted}")
    click.echo(f"wrote {len(grid['checkpoints'])} checkpoints and grid.json to {out}")
    if grid.get("task"):
        task = grid["task"]
        click.echo(f"classifiers fitted to the demo task '{task['name']}' ({task['train_size']} train sentences); "
                   f"its eval split ({task['eval_size']} labelled sentences) is {out / EVAL_FILE}")
        click.echo(f"measure accuracy through the engines with: prumux-compile build {out} "
                   f"--eval-data {out / EVAL_FILE} -o {out}-build")
