"""Console output of ``build``: a rich table on a terminal, plain text otherwise."""
from __future__ import annotations

import click

COLUMNS = ("id", "N", "sparsity", "backend", "precision", "seq/s", "p50 ms", "p99 ms", "speedup", "accuracy",
           "Δ", "chosen")


#: Column header of the task's metric (report ``metric``), in place of "accuracy".
METRIC_HEADERS = {"accuracy": "accuracy", "pearson": "Pearson r", "spearman": "Spearman rho"}


def columns(report: dict) -> tuple[str, ...]:
    """:data:`COLUMNS` with the accuracy column named after the report's metric (e.g. "Pearson r")."""
    header = METRIC_HEADERS.get(report.get("metric") or "accuracy", "accuracy")
    return tuple(header if c == "accuracy" else c for c in COLUMNS)


def candidate_rows(report: dict) -> list[tuple[str, ...]]:
    """One tuple of strings per candidate, in the order of :func:`columns`."""
    chosen = (report.get("selection") or {}).get("chosen")
    base = (report.get("selection") or {}).get("baseline_accuracy")
    rows = []
    for c in report["candidates"]:
        acc = c.get("accuracy")
        delta = "" if acc is None or base is None else f"{acc - base:+.4f}"
        rows.append((c["id"], str(c["num_instances"]), f"{c['sparsity']:.3f}", c["backend"], c["precision"],
                     f"{c['throughput']:.1f}", f"{c['latency_p50_ms']:.2f}", f"{c['latency_p99_ms']:.2f}",
                     f"{c['speedup_vs_eager']:.2f}x", "" if acc is None else f"{acc:.4f}", delta,
                     "✓" if c["id"] == chosen else ""))
    return rows


def print_candidates(report: dict, fancy: bool) -> None:
    """Print the candidate table (rich when ``fancy``)."""
    rows = candidate_rows(report)
    cols = columns(report)
    if fancy:
        from rich.console import Console
        from rich.table import Table

        t = Table(*cols, title=f"candidates ({report['accuracy_kind']})")
        for r in rows:
            t.add_row(*r)
        Console().print(t)
        return
    widths = [max(len(cols[i]), *(len(r[i]) for r in rows)) for i in range(len(cols))] if rows else []
    click.echo(f"candidates: {report['accuracy_kind']}")
    click.echo("  ".join(h.ljust(w) for h, w in zip(cols, widths)))
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)))
