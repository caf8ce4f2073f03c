"""Helpers shared by the CLI commands: error reporting and terminal detection."""
from __future__ import annotations

import functools
import os
import sys

import click

from prumux_compile.errors import PrumuxError


def fancy_output(no_progress: bool = False) -> bool:
    """True when rich tables/progress should be drawn: stdout is a terminal, ``CI`` unset, not disabled."""
    return sys.stdout.isatty() and not os.environ.get("CI") and not no_progress


def handle_errors(fn):
    """Decorator: a :class:`PrumuxError` prints one line on stderr and exits with its ``exit_code``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PrumuxError as err:
            click.echo(f"error: {err}", err=True)
            table = getattr(err, "table", None)
            if table:
                click.echo(table, err=True)
            sys.exit(err.exit_code)

    return wrapper
