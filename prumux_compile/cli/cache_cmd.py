"""``prumux-compile cache``: see and clean the build cache (:mod:`prumux_compile.cache`).

``cache`` / ``cache list`` print one line per entry (size, age, candidate id, N, backend, checkpoint; or the demo
training job) and the
total; ``cache clean`` removes every entry, or with ``--older-than 7d`` those last written before then;
``--dry-run`` only lists what would go. Errors: 2 (a cache folder that is a file, cannot be read or written).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from prumux_compile.cli.common import handle_errors

_CACHE_DIR = click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
                          help="Cache folder (default $PRUMUX_CACHE_DIR or ~/.cache/prumux-compile).")


def _describe(e, now: float) -> str:
    from prumux_compile.cache import human_age, human_size

    if e.kind == "entry":
        i = e.info
        what = (f"{i.get('id') or '?'} (N={i.get('num_instances', '?')}, {i.get('backend') or '?'})  "
                f"{i.get('checkpoint') or ''}")
    elif e.kind == "demo":
        i = e.info
        acc = i.get("validation_accuracy")
        what = (f"demo training job {i.get('job') or '?'} (N={i.get('num_instances', '?')}, target "
                f"s={i.get('target_sparsity', '?')}" + (f", val acc {acc:.4f}" if isinstance(acc, float) else "")
                + ")")
    elif e.kind == "temporary":
        what = "temporary (being written, or left by a stopped build)"
    else:
        what = "not a prumux-compile entry (left alone)"
    return f"{e.key:<26} {human_size(e.size_bytes):>10} {human_age(now - e.mtime):>5}  {what}"


def _list(cache_dir: Path | None, as_json: bool) -> None:
    from prumux_compile.cache import cache_root, human_size, list_entries

    root = cache_root(cache_dir)
    entries = list_entries(root)
    now = time.time()
    ours = [e for e in entries if e.kind != "foreign"]
    total = sum(e.size_bytes for e in ours)
    if as_json:
        click.echo(json.dumps({"root": str(root), "total_bytes": total,
                               "entries": [e.to_dict(now) for e in entries]}, indent=2))
        return
    click.echo(f"cache: {root}")
    if not entries:
        click.echo("  empty")
    else:
        click.echo(f"{'key':<26} {'size':>10} {'age':>5}  candidate (N, backend)  checkpoint")
        for e in entries:
            click.echo(_describe(e, now))
    n_entries = sum(e.kind == "entry" for e in entries)
    n_demo = sum(e.kind == "demo" for e in entries)
    click.echo(f"total: {n_entries} entr{'y' if n_entries == 1 else 'ies'}"
               + (f" and {n_demo} demo training job{'s' if n_demo != 1 else ''}" if n_demo else "")
               + f", {human_size(total)}"
               + (f" (temporary folders included: {sum(e.kind == 'temporary' for e in entries)})"
                  if any(e.kind == "temporary" for e in entries) else ""))


@click.group("cache", invoke_without_command=True)
@_CACHE_DIR
@click.pass_context
@handle_errors
def cache_cmd(ctx: click.Context, cache_dir: Path | None) -> None:
    """List (default) or clean the build cache."""
    if ctx.invoked_subcommand is None:
        _list(cache_dir, as_json=False)
    else:
        ctx.ensure_object(dict)["cache_dir"] = cache_dir


def _dir(ctx: click.Context, cache_dir: Path | None) -> Path | None:
    if cache_dir is not None:
        return cache_dir
    parent = ctx.parent.obj if ctx.parent is not None and isinstance(ctx.parent.obj, dict) else {}
    return parent.get("cache_dir")


@cache_cmd.command("list")
@_CACHE_DIR
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
@click.pass_context
@handle_errors
def cache_list_cmd(ctx: click.Context, cache_dir: Path | None, as_json: bool) -> None:
    """One line per cache entry (size, age, candidate, checkpoint) and the total size."""
    _list(_dir(ctx, cache_dir), as_json)


@cache_cmd.command("clean")
@_CACHE_DIR
@click.option("--older-than", "older_than", default=None, metavar="AGE",
              help="Only entries last written more than AGE ago (e.g. 7d, 12h, 30m; a bare number means days).")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.pass_context
@handle_errors
def cache_clean_cmd(ctx: click.Context, cache_dir: Path | None, older_than: str | None, dry_run: bool) -> None:
    """Remove cache entries (all, or those older than --older-than). Folders not written by prumux-compile stay."""
    from prumux_compile.cache import cache_root, clean, human_size, parse_age

    root = cache_root(_dir(ctx, cache_dir))
    age = parse_age(older_than) if older_than is not None else None
    removed = clean(root, older_than_s=age, dry_run=dry_run)
    now = time.time()
    for e in removed:
        click.echo(("would remove " if dry_run else "removed ") + _describe(e, now))
    freed = sum(e.size_bytes for e in removed)
    verb = "would free" if dry_run else "freed"
    click.echo(f"{verb} {human_size(freed)} ({len(removed)} folder{'s' if len(removed) != 1 else ''}) in {root}")
