"""The build cache: where it lives, what it holds, and cleaning it (``prumux-compile cache``).

``build`` stores every finished candidate (its ``model.onnx``, ``model.ort.onnx``, ``validation.json``,
``candidate.json``, ``predictions.npz``) in one folder per cache key (a hash of the checkpoint files' contents,
the backend, the precision and the options that change the result), so a rerun with nothing changed restores it
instead of compiling and measuring again. Entries are hard links to the files of the build's OUT where the file
system allows (copies otherwise): an entry costs its candidate's size (the graphs: about 110-320 MB for a
MiniLM-sized demo checkpoint, about 2 x 420 MB for BERT-base) only once OUT is gone, per checkpoint and per option
set, and nothing removes entries automatically.

Layout: ``<root>/<key>/candidate.json ...`` for complete entries; ``<root>/.tmp-*`` folders are entries being
written (or left by a killed build); ``<root>/demo-train/<job>-<key>/`` (``meta.json``, ``state.pt``) holds the
trained weights of one ``demo-checkpoints`` training job (:mod:`prumux_compile.demo.train`, about 90 MB each).
Only those kinds are ever removed by :func:`clean`: anything else in the folder (the root may be shared through
``$PRUMUX_CACHE_DIR``) is listed as foreign and left alone.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from prumux_compile.errors import InputError

__all__ = ["CacheEntry", "cache_root", "list_entries", "clean", "parse_age", "human_size", "TEMP_PREFIX",
           "TEMP_GRACE_S"]

#: Prefix of the temporary folders an entry is written in before it is renamed into place.
TEMP_PREFIX = ".tmp-"
#: Sub-folder of the cache root with the demo's trained weights, one folder per training job.
DEMO_DIR = "demo-train"
#: The file whose presence makes a demo-train folder a complete training-job entry.
DEMO_MARKER = "meta.json"
#: A temporary folder younger than this (seconds) may belong to a running build: :func:`clean` keeps it.
TEMP_GRACE_S = 3600.0
#: The file whose presence makes a folder a complete cache entry.
MARKER = "candidate.json"
#: Name of an entry folder: the cache key ``build`` writes (24 hex digits). A folder with another name is foreign
#: even if it holds ``candidate.json`` (e.g. a build's ``OUT/candidates/<id>`` when --cache-dir points there).
KEY_RE = re.compile(r"^[0-9a-f]{24}$")


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache folder: ``cache_dir`` if given, else ``$PRUMUX_CACHE_DIR``, else ``~/.cache/prumux-compile``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("PRUMUX_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "prumux-compile"


@dataclass
class CacheEntry:
    """One folder of the cache.

    Attributes:
        path: the folder.
        kind: ``"entry"`` (complete: named by a cache key, :data:`KEY_RE`, and holding ``candidate.json``),
            ``"demo"`` (a demo training job's weights in ``demo-train/``, holding ``meta.json``),
            ``"temporary"`` (``.tmp-*``: being written or left by a killed build) or ``"foreign"`` (not written by
            prumux-compile; never removed).
        size_bytes: bytes of all regular files below it (symbolic links not followed).
        mtime: newest modification time (seconds since the epoch) of the folder and its files: when the entry was
            last written.
        info: for complete entries, ``id``, ``checkpoint``, ``backend``, ``num_instances`` and ``sparsity`` read
            from its ``candidate.json``; for demo entries ``job``, ``num_instances``, ``target_sparsity`` and
            ``validation_accuracy`` from its ``meta.json`` (empty when unreadable).
    """

    path: Path
    kind: str
    size_bytes: int
    mtime: float
    info: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        in_demo = self.kind == "demo" or (self.kind == "foreign" and self.path.parent.name == DEMO_DIR)
        return f"{DEMO_DIR}/{self.path.name}" if in_demo else self.path.name

    def to_dict(self, now: float | None = None) -> dict:
        """JSON-ready dict (``age_s`` relative to ``now``, default the current time)."""
        now = time.time() if now is None else now
        return {"key": self.key, "path": str(self.path), "kind": self.kind, "size_bytes": self.size_bytes,
                "mtime": self.mtime, "age_s": max(0.0, now - self.mtime), **{"info": self.info}}


def _scan(path: Path) -> tuple[int, float]:
    size = 0
    newest = path.lstat().st_mtime
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:  # removed while we look
                continue
            size += st.st_size
            newest = max(newest, st.st_mtime)
    return size, newest


def _info(path: Path, demo: bool = False) -> dict:
    import json

    try:
        data = json.loads((path / (DEMO_MARKER if demo else MARKER)).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    if demo:
        m = data.get("metrics") if isinstance(data.get("metrics"), dict) else {}
        return {k: m.get(k) for k in ("job", "num_instances", "target_sparsity", "validation_accuracy")}
    return {k: data.get(k) for k in ("id", "checkpoint", "backend", "num_instances", "sparsity")}


def list_entries(root: str | Path) -> list[CacheEntry]:
    """Every folder directly in ``root`` (see :class:`CacheEntry`), newest first; empty when ``root`` is missing.

    Raises:
        InputError: ``root`` exists but is not a folder.
        OSError: ``root`` cannot be read (the CLI turns it into exit 2 with the path and reason).
    """
    root = Path(root)
    if not root.exists():
        return []
    if not root.is_dir():
        raise InputError(f"cache {root}: is a file, not a folder")
    entries = []
    demo = root / DEMO_DIR
    children = [(c, False) for c in sorted(root.iterdir()) if c != demo or demo.is_symlink()]
    if demo.is_dir() and not demo.is_symlink():
        children += [(c, True) for c in sorted(demo.iterdir())]
    for child, in_demo in children:
        if child.is_symlink() or not child.is_dir():
            continue
        try:
            size, mtime = _scan(child)
        except FileNotFoundError:  # removed while we look
            continue
        if child.name.startswith(TEMP_PREFIX):
            kind = "temporary"
        elif in_demo:
            kind = "demo" if (child / DEMO_MARKER).is_file() else "foreign"
        elif (child / MARKER).is_file() and KEY_RE.match(child.name):
            kind = "entry"
        else:
            kind = "foreign"
        info = _info(child, demo=kind == "demo") if kind in ("entry", "demo") else {}
        entries.append(CacheEntry(child, kind, size, mtime, info))
    entries.sort(key=lambda e: (-e.mtime, e.key))
    return entries


def clean(root: str | Path, *, older_than_s: float | None = None, dry_run: bool = False,
          now: float | None = None) -> list[CacheEntry]:
    """Remove complete entries and demo training jobs (all, or those last written more than ``older_than_s``
    seconds ago) and temporary folders older than ``max(older_than_s, TEMP_GRACE_S)``; foreign folders are never
    touched.

    Each entry is first renamed to a ``.tmp-`` name, so a build never sees a half-removed entry as complete.

    Returns:
        The entries removed (or, with ``dry_run``, that would be removed), newest first.

    Raises:
        InputError: ``older_than_s`` negative, or ``root`` is a file.
        OSError: an entry cannot be removed (the CLI turns it into exit 2 with the path and reason).
    """
    if older_than_s is not None and not older_than_s >= 0:
        raise InputError(f"older_than_s must be >= 0 seconds, got {older_than_s!r}")
    now = time.time() if now is None else now
    chosen = []
    for e in list_entries(root):
        age = now - e.mtime
        if e.kind in ("entry", "demo") and (older_than_s is None or age > older_than_s):
            chosen.append(e)
        elif e.kind == "temporary" and age > max(older_than_s or 0.0, TEMP_GRACE_S):
            chosen.append(e)
    if dry_run:
        return chosen
    for e in chosen:
        victim = e.path
        if e.kind in ("entry", "demo"):
            victim = e.path.with_name(f"{TEMP_PREFIX}del-{e.path.name}-{os.getpid()}")
            os.rename(e.path, victim)
        shutil.rmtree(victim)
    return chosen


_AGE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_AGE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)


def parse_age(text: str) -> float:
    """Seconds in an age such as ``30d``, ``12h``, ``90m``, ``45s``, ``2w``; a bare number means days.

    Raises:
        InputError: anything else.
    """
    m = _AGE_RE.match(str(text))
    if not m:
        raise InputError(f"age {text!r}: expected a number with an optional unit s, m, h, d or w (e.g. 7d, 12h)")
    return float(m.group(1)) * _AGE_UNITS[(m.group(2) or "d").lower()]


def human_size(n: int | float) -> str:
    """Bytes in decimal units: ``512 B``, ``1.5 kB``, ``152.3 MB``, ``1.60 GB``."""
    n = float(n)
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.2f} {unit}" if unit == "GB" else f"{value:.1f} {unit}"
    return f"{int(n)} B"


def human_age(seconds: float) -> str:
    """A short age: ``45s``, ``12m``, ``5h``, ``3d``."""
    s = max(0.0, float(seconds))
    for unit, scale in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if s >= scale:
            return f"{int(s // scale)}{unit}"
    return f"{int(s)}s"
