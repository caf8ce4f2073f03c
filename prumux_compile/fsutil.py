"""File-system helpers for atomic outputs."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def output_tempdir(prefix: str, dir: str | Path, suffix: str = "") -> Path:
    """A fresh temporary directory in ``dir`` for an output that is renamed into place when complete.

    Unlike :func:`tempfile.mkdtemp` (mode 0700), the directory gets the permissions the process umask gives a
    new directory, so the renamed output (e.g. a Triton model repository) is readable by other users as any
    directory made with ``mkdir`` would be.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=dir))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)
    return path
