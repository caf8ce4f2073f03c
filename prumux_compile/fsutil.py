"""File-system helpers for atomic outputs."""
from __future__ import annotations

import errno
import os
import shutil
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


_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free space or choose another location (see 'prumux-compile cache' for the "
                  "build cache)",
    errno.EDQUOT: "the disk quota is exhausted: free space or choose another location",
    errno.EROFS: "the location is on a read-only file system: choose a writable folder",
    errno.EACCES: "no permission: choose a folder you can write to, or fix its permissions",
    errno.EPERM: "operation not permitted: choose a folder you can write to",
}


def describe_os_error(exc: OSError) -> str:
    """One line for a file-system error: the path(s), the OS reason with its errno name, and what to do.

    Example: ``/mnt/ro/out: Read-only file system [EROFS]; the location is on a read-only file system: ...``.
    """
    reason = exc.strerror or str(exc) or type(exc).__name__
    code = errno.errorcode.get(exc.errno if isinstance(exc.errno, int) else -1)
    if code:
        reason = f"{reason} [{code}]"
    paths = [str(p) for p in (exc.filename, exc.filename2) if p not in (None, "")]
    head = f"{' -> '.join(paths)}: {reason}" if paths else reason
    hint = _OS_HINTS.get(exc.errno if isinstance(exc.errno, int) else -1)
    return f"{head}; {hint}" if hint else head


def disk_full_error(where: str | Path, need_bytes: int, exc: BaseException) -> OSError | None:
    """An ``OSError(ENOSPC)`` naming ``where`` when ``exc`` (raised by a library that does not say why, e.g. ONNX
    Runtime's "Protobuf serialization failed") was most likely a full disk: its message says so, or the file
    system holding ``where`` has less than ``need_bytes`` free; None otherwise."""
    text = str(exc)
    try:
        free = shutil.disk_usage(nearest_existing(where)).free
    except OSError:
        free = None
    if "No space left" in text or (free is not None and free < need_bytes):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where))
    return None


def nearest_existing(path: str | Path) -> Path:
    """``path`` itself when it exists, else its nearest existing ancestor (``.`` for a relative path)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def require_writable_dir(path: str | Path, *, what: str, hint: str = "") -> None:
    """Check, before any work starts, that files can be created in folder ``path`` (existing or to be made).

    Probes by creating and removing an empty temporary folder in ``path``, or in its nearest existing ancestor
    when ``path`` does not exist yet; nothing is left behind. The probe sees what the OS says, so it is right for
    read-only mounts, permissions, ACLs and root.

    Raises:
        InputError (exit 2): the folder cannot be created or written; the message names ``what``, the path and
            the OS reason, then ``hint``.
    """
    from prumux_compile.errors import InputError

    target = Path(path)
    try:
        where = nearest_existing(target)
        if not where.is_dir():
            raise InputError(f"{what}: {where} is a file, not a folder")
        probe = tempfile.mkdtemp(prefix=".prumux-write-probe-", dir=where)
        os.rmdir(probe)
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(target)
        raise InputError(f"{what}: cannot write there: {describe_os_error(exc)}" + (f"; {hint}" if hint else "")) \
            from None


def refuse_inputs_inside(out: str | Path, inputs: dict[str, str | Path | None], *, flag: str = "-o") -> None:
    """Refuse an output folder that an input lies in (or is): replacing the output would delete the input.

    Paths are compared after resolving symbolic links and ``..`` (``Path.resolve``), so ``ckpt/../ckpt`` or a
    link to the output is recognised too.

    Args:
        out: the output folder that a run creates or replaces.
        inputs: what each input is (e.g. ``"checkpoint n1_s0"``) -> its path; None values are skipped.
        flag: the option that named ``out`` (for the message).

    Raises:
        InputError (exit 2): an input equals ``out`` or lies below it; the message names both paths.
    """
    from prumux_compile.errors import InputError

    target = Path(out).resolve()
    for what, path in inputs.items():
        if path is None:
            continue
        p = Path(path).resolve()
        if p == target or target in p.parents:
            raise InputError(f"{what} {path} lies inside the output {out} ({flag}), which a run replaces: nothing "
                             "would be left of it; choose another output folder")
