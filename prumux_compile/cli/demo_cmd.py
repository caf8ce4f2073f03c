"""`prumux-compile demo-checkpoints OUT`: train the demo grid (all-MiniLM-L6-v2 on Rotten Tomatoes, PruMUX recipe of
:mod:`prumux_compile.demo.train`) and write it as upstream-format checkpoints, with the test split in
``OUT/eval.tsv``.

Only wires :func:`prumux_compile.demo.grid.write_demo_grid`; torch is imported when the command runs, not when
``--help`` is shown.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from prumux_compile.errors import InputError, PrumuxError


def _split(text: str, kind, what: str) -> tuple:
    try:
        return tuple(kind(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"--{what} {text!r}: expected a comma-separated list like "
                         f"{'1,2,5' if kind is int else '0,0.5,0.8'}") from None


class _Progress:
    """One rich progress bar (steps, elapsed, ETA) per training job; plain lines when not on a terminal."""

    def __init__(self, fancy: bool):
        self.fancy = fancy
        self.bars: dict[str, int] = {}
        self.progress = None
        if fancy:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.progress = Progress(TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("steps"), TimeElapsedColumn(), TextColumn("ETA"),
                                     TimeRemainingColumn(), transient=False)

    def __enter__(self):
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def step(self, job: str, done: int, total: int) -> None:
        if self.progress is None:
            if done == total or done % max(1, total // 4) == 0:
                click.echo(f"{job}: step {done}/{total}", err=True)
            return
        if job not in self.bars:
            self.bars[job] = self.progress.add_task(job, total=total)
        self.progress.update(self.bars[job], completed=done)

    def log(self, msg: str) -> None:
        if self.progress is not None:
            self.progress.console.print(msg)
        else:
            click.echo(msg, err=True)


@click.command("demo-checkpoints")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--nums", default="1,2,5", show_default=True, help="Multiplexing widths N, comma-separated.")
@click.option("--sparsities", default="0,0.5,0.8", show_default=True,
              help="Target CoFi sparsities in [0, 1), comma-separated.")
@click.option("--masked-forms", type=click.Choice(["all", "some", "none"]), default="some", show_default=True,
              help="Also write full-weights + zs.pt twins of pruned checkpoints: all, the N=2 ones, or none.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the recipe (init, batches, dropout).")
@click.option("--quick", is_flag=True, help="A seconds-long recipe on 16 sentences (for tests; the models learn "
                                            "nothing useful).")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Processes (one torch thread each) for the jobs after the teacher.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True,
              help="PyTorch threads of the teacher job.")
@click.option("--no-cache", is_flag=True, help="Retrain every model instead of reusing cached weights.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Cache root (default $PRUMUX_CACHE_DIR or ~/.cache/prumux-compile).")
def demo_checkpoints_cmd(out: Path, nums: str, sparsities: str, masked_forms: str, seed: int, quick: bool,
                         workers: int, threads: int, no_cache: bool, cache_dir: Path | None) -> None:
    """Train the PruMUX demo grid (all-MiniLM-L6-v2, Rotten Tomatoes) and write it into OUT (a new folder)."""
    t0 = time.perf_counter()
    try:
        from prumux_compile.demo.grid import EVAL_FILE, write_demo_grid

        with _Progress(sys.stderr.isatty()) as prog:
            grid = write_demo_grid(out, _split(nums, int, "nums"), _split(sparsities, float, "sparsities"),
                                   masked_forms, seed, recipe="quick" if quick else "full", cache_dir=cache_dir,
                                   workers=workers, threads=threads, use_cache=not no_cache,
                                   progress=prog.step, log=prog.log)
    except PrumuxError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    for c in grid["checkpoints"]:
        tr = c.get("training") or {}
        acc = tr.get("validation_accuracy")
        click.echo(f"{c['name']:<16} N={c['num_instances']:<2} {c['family']:<18} target={c['target_sparsity']:.2f} "
                   f"sparsity={c['sparsity']:.4f} heads={sum(c['heads_per_layer'])} d'={c['hidden_width']}"
                   + (f" val_acc={acc:.4f}" if acc is not None else ""))
    timings = grid["timings"]
    click.echo("where the time went:")
    for job, m in grid["training"].items():
        how = "cache" if m.get("cached") else f"{m['threads']} thread{'s' if m['threads'] > 1 else ''}"
        click.echo(f"  {job:<14} {m['seconds']:7.1f} s  ({m['steps']} steps, {how}"
                   + (f", trained in an earlier run" if m.get("cached") else "") + ")")
    click.echo(f"  training (wall) {timings['training_s']:6.1f} s   writing {timings['writing_s']:.1f} s   "
               f"total {time.perf_counter() - t0:.1f} s")
    click.echo(f"wrote {len(grid['checkpoints'])} checkpoints and grid.json to {out}; test split: {out / EVAL_FILE}")
    click.echo(f"measure accuracy through the engines with: prumux-compile build {out} --seq-len {grid['seq_len']} "
               f"--eval-data {out / EVAL_FILE} -o {out}-build")
