"""Progress of ``prumux-compile build`` on stderr.

On a terminal: a live rich progress line — the current stage (``n2_s0.50: benchmark``), "k of n candidates", a
bar and the elapsed time — with one line printed above it per finished candidate. Elsewhere (a pipe, a log file,
CI): one plain line per finished candidate and one per build stage, each prefixed with the elapsed time, so a log
shows progress as it happens. Both are driven by :class:`prumux_compile.driver.BuildOptions` ``progress`` (stage
messages) and ``on_candidate`` (candidate started / finished).
"""
from __future__ import annotations

import time

import click


def _elapsed(seconds: float) -> str:
    """``"  7.2s"``, ``" 2m05s"``, ``"1h02m"``."""
    if seconds < 60:
        return f"{seconds:5.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60):2d}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def candidate_summary(info: dict) -> str:
    """One line of a finished candidate's numbers: seq/s, speedup over eager PyTorch, validation, cache (or why
    a reduced-precision candidate was rejected)."""
    if "rejected" in info:
        return f"rejected ({info['rejected'].get('precision')} outside its criteria): {info['rejected']['reason']}"
    val = info.get("validation") or {}
    checked = (f"validated (max |Δlogit| {val['max_abs_diff']:.1e})"
               if val.get("passed") and val.get("max_abs_diff") is not None else "validated")
    return (f"N={info.get('num_instances')}, s={info.get('sparsity', 0.0):.3f}: "
            f"{info.get('throughput', float('nan')):.1f} seq/s, {info.get('speedup_vs_eager', float('nan')):.2f}x "
            f"eager, {checked}" + (" (cached)" if info.get("cached") else ""))


class LogProgress:
    """Plain lines on stderr (not a terminal): one per finished candidate, one per build stage."""

    def __init__(self, stream=None, clock=time.monotonic):
        self.stream = stream
        self.clock = clock
        self.start = clock()
        self.current: str | None = None
        self.started_at: dict[str, float] = {}
        self.announced = False

    def _line(self, text: str) -> None:
        click.echo(f"[{_elapsed(self.clock() - self.start)}] {text}", err=True, file=self.stream)

    def stage(self, message: str) -> None:
        """A stage message of the driver; the sub-stages of the running candidate are not logged."""
        if self.current is not None and message.startswith(f"{self.current}: "):
            return
        self._line(message)

    def candidate(self, done: int, total: int, cid: str, info: dict | None) -> None:
        if info is None:  # several may be running at once on a cluster executor
            if not self.announced:
                self.announced = True
                self._line(f"building {total} candidate{'s' if total != 1 else ''}")
            self.current, self.started_at[cid] = cid, self.clock()
            return
        self.current = None
        took = self.clock() - self.started_at.pop(cid, self.start)
        self._line(f"candidate {done} of {total}: {cid} done in {took:.1f}s — {candidate_summary(info)}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class TerminalProgress:
    """A live rich progress line on stderr: stage, "k of n candidates", bar, elapsed time."""

    def __init__(self, console=None):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = console or Console(stderr=True)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.completed} of {task.total} candidates"),
            BarColumn(bar_width=24),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=self.console,
            transient=True,
        )
        self.task = None

    def __enter__(self):
        self.progress.__enter__()
        self.task = self.progress.add_task("checking inputs", total=None)
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def stage(self, message: str) -> None:
        self.progress.update(self.task, description=message)

    def candidate(self, done: int, total: int, cid: str, info: dict | None) -> None:
        self.progress.update(self.task, total=total, completed=done)
        if info is not None:
            mark = "[yellow]✗[/yellow]" if "rejected" in info else "[green]✓[/green]"
            self.progress.console.print(f"{mark} {cid}  {candidate_summary(info)}", highlight=False)


def build_progress(terminal: bool):
    """:class:`TerminalProgress` when ``terminal``, else :class:`LogProgress` (writing to the current stderr)."""
    return TerminalProgress() if terminal else LogProgress()
