"""Helpers shared by the CLI commands: error reporting, signals and terminal detection.

Every failure reaches the user as ONE line on stderr and an exit code (README "Commands"):

- :class:`~prumux_compile.errors.PrumuxError`: ``error: <message>``, its ``exit_code`` (2..6);
- :class:`OSError` (read-only location, no permission, disk full, ...): ``error: <path>: <OS reason>``, exit 2;
- Ctrl-C (SIGINT): exit 130; SIGTERM: exit 143 (128 + signal number, the shell convention);
- any other exception (a bug here or in a library): ``error: internal error: <type>: <message>`` with a hint to
  rerun with ``prumux-compile --debug ...``, exit 1; with ``--debug`` the traceback is shown instead.

Outputs are written atomically (a temporary folder renamed into place), and every writer removes its temporary
folder on any exception, KeyboardInterrupt included, so none of these exits leaves a partial output behind.
"""
from __future__ import annotations

import functools
import os
import signal
import sys

import click

from prumux_compile.errors import PrumuxError
from prumux_compile.fsutil import describe_os_error

#: Exit status of a command stopped by Ctrl-C (128 + SIGINT).
EXIT_SIGINT = 128 + signal.SIGINT
#: Exit status of a command stopped by SIGTERM (128 + SIGTERM).
EXIT_SIGTERM = 128 + signal.SIGTERM
#: Exit status of an unexpected (non-PrumuxError) exception.
EXIT_INTERNAL = 1
#: Exit status of a file-system error (bad location given by the user, full disk): "bad input".
EXIT_OS_ERROR = 2

class Terminated(KeyboardInterrupt):
    """Raised by the SIGTERM handler of the CLI so that cleanup code written for Ctrl-C (``except
    BaseException`` / ``finally``) runs for SIGTERM too (timeouts, ``docker stop``, a cancelled CI job)."""

    signum = signal.SIGTERM


def fancy_output(no_progress: bool = False) -> bool:
    """True when rich tables should be drawn: stdout is a terminal, ``CI`` unset, not disabled."""
    return sys.stdout.isatty() and not os.environ.get("CI") and not no_progress


def stderr_is_terminal() -> bool:
    """True when live progress may be drawn on stderr: stderr is a terminal and ``CI`` is unset."""
    try:
        return sys.stderr.isatty() and not os.environ.get("CI")
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def report_exception(exc: BaseException, *, debug: bool = False) -> int:
    """Print the one-line message for ``exc`` on stderr and return the exit status to use.

    ``click`` control-flow exceptions and :class:`SystemExit` are not handled here (re-raise them).
    With ``debug`` an unexpected exception is re-raised so that its traceback is shown.
    """
    if isinstance(exc, PrumuxError):
        table = getattr(exc, "table", None)
        click.echo(f"error: {exc}", err=True)
        if table:
            click.echo(table, err=True)
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        if isinstance(exc, Terminated):
            click.echo("error: stopped by SIGTERM; no partial output was left", err=True)
            return EXIT_SIGTERM
        click.echo("error: interrupted (Ctrl-C); no partial output was left", err=True)
        return EXIT_SIGINT
    if isinstance(exc, OSError):
        click.echo(f"error: {describe_os_error(exc)}", err=True)
        return EXIT_OS_ERROR
    if debug:
        raise exc
    detail = _first_line(exc)
    click.echo(f"error: internal error: {type(exc).__name__}{': ' + detail if detail else ''} (a bug in "
               f"prumux-compile or a library it uses; rerun as 'prumux-compile --debug ...' for the traceback)",
               err=True)
    return EXIT_INTERNAL


def handle_errors(fn):
    """Decorator: a :class:`PrumuxError` or :class:`OSError` prints one line on stderr and exits with its code.

    The group in :mod:`prumux_compile.cli.main` handles everything else (signals, unexpected exceptions), so
    commands without this decorator get the same treatment.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:  # the reader closed stdout (`... | head`): nothing more to say, no error
            try:  # Python would flush into the closed pipe again at exit
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):  # stdout is not a file descriptor (e.g. captured by a test runner)
                pass
            sys.exit(0)
        except (PrumuxError, OSError) as err:
            sys.exit(report_exception(err))

    return wrapper


class sigterm_raises:
    """Context manager: while active, SIGTERM raises :class:`Terminated` in the main thread.

    The previous handler is restored on exit. Outside the main thread (where Python cannot install signal
    handlers) it does nothing.
    """

    def __enter__(self):
        self._previous = None
        try:
            self._previous = signal.signal(signal.SIGTERM, self._raise)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    @staticmethod
    def _raise(signum, frame):
        raise Terminated()

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False
