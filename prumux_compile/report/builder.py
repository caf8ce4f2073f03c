"""``report.json``: the versioned record of one ``build`` run."""
from __future__ import annotations

import json
import math
from pathlib import Path

#: Bumped on any incompatible change of the report layout.
SCHEMA_VERSION = "1.0"


def _clean(obj):
    """JSON-safe copy: NaN/Inf become None, tuples lists, Paths strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_report(report: dict, path: str | Path) -> Path:
    """Write ``report`` (with ``schema_version`` added) as indented JSON; returns the path."""
    path = Path(path)
    data = {"schema_version": SCHEMA_VERSION, **report}
    path.write_text(json.dumps(_clean(data), indent=2, sort_keys=False) + "\n")
    return path


def read_report(path: str | Path) -> dict:
    """Read a ``report.json``.

    Raises:
        InputError: not a build report of a known schema version.
    """
    from prumux_compile.errors import InputError

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read the build report ({exc})") from None
    if not isinstance(data, dict) or str(data.get("schema_version", "")).split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise InputError(f"{path}: not a prumux-compile build report (schema_version {SCHEMA_VERSION} expected)")
    return data
