"""Errors and their process exit codes (README "Commands").

Every error raised for bad user input derives from :class:`PrumuxError` and carries ``exit_code``;
the CLI prints ``str(error)`` on one line and exits with that code.
"""
from __future__ import annotations


class PrumuxError(Exception):
    """Base class. ``exit_code`` is the process exit status the CLI uses."""

    exit_code = 2


class CheckpointError(PrumuxError):
    """A checkpoint directory cannot be read (missing file, bad shape, NaN, unknown variant). Exit 2."""

    exit_code = 2


class IRInvariantError(PrumuxError):
    """An IR pass produced an IR that violates an invariant; the message names the pass. Exit 4."""

    exit_code = 4


class ValidationError(PrumuxError):
    """A compiled artifact disagrees with the reference beyond tolerance, or produced NaN/Inf. Exit 3."""

    exit_code = 3


class EngineBuildError(PrumuxError):
    """An engine could not be built (names the backend/profile). Exit 4."""

    exit_code = 4


class NoCandidateError(PrumuxError):
    """No candidate meets the accuracy budget. Exit 5."""

    exit_code = 5


class TritonConfigError(PrumuxError):
    """A Triton model configuration does not match the model. Exit 6."""

    exit_code = 6


class InputError(PrumuxError):
    """Bad runtime input (e.g. a sequence longer than the compiled length). Exit 2."""

    exit_code = 2


class CandidatesLostError(PrumuxError):
    """Candidates were lost to cluster faults (a worker or node died, twice): every one, or any one with
    ``--require-all``. Exit 7."""

    exit_code = 7
