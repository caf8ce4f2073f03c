"""Timing loops for engines: per-call latency, percentiles and throughput.

The host these numbers come from is shared and noisy (whole minutes can run 2-10x
slower), so contenders that are to be compared should be timed together with :func:`interleaved`, and
results quoted as medians and ratios, never as one absolute time.

Conventions
-----------
- One *call* runs one batch of ``batch_size`` input sequences (rows of the caller's batch, not mux
  groups), each ``seq_len`` tokens long. Latency is wall-clock time of the call measured with
  :func:`time.perf_counter`, in milliseconds.
- Percentiles use :func:`numpy.percentile` with its default (linear interpolation) method.
- ``throughput`` is input sequences per second at the median latency: ``batch_size / (p50_ms / 1000)``
  (the per-batch timing of the upstream protocol, docs/checkpoint-formats.md section 6, reduced with a
  median instead of a total so that a noisy minute does not dominate).
"""
from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Callable

import numpy as np

from prumux_compile.errors import InputError

__all__ = ["Timing", "time_callable", "interleaved", "environment"]


@dataclass
class Timing:
    """Latency statistics of one timed callable.

    Attributes:
        batch_size: input sequences per call (>= 1).
        seq_len: tokens per sequence (>= 1); recorded, not used in any formula.
        rounds: number of timed calls, equal to ``len(latencies_ms)`` (may exceed the requested
            rounds when ``min_time_s`` asked for more).
        threads: torch intra-op threads of the run: the value set, or (:func:`interleaved`) the one in effect;
            None when torch was neither set nor imported.
        latencies_ms: one wall-clock latency per timed call, ms per batch, in call order.
        p50_ms, p90_ms, p99_ms: percentiles of ``latencies_ms`` (numpy linear interpolation), ms.
        mean_ms: arithmetic mean of ``latencies_ms``, ms.
        throughput: input sequences per second, ``batch_size * 1000 / p50_ms`` (``inf`` if p50 is 0).
    """

    batch_size: int
    seq_len: int
    rounds: int
    threads: int | None
    latencies_ms: list[float]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float

    def as_dict(self) -> dict:
        """Plain-JSON-serialisable dict of all fields (for report.json)."""
        return asdict(self)


def _summarize(latencies_ms: list[float], *, batch_size: int, seq_len: int, threads: int | None) -> Timing:
    lat = np.asarray(latencies_ms, dtype=np.float64)
    p50, p90, p99 = (float(v) for v in np.percentile(lat, [50.0, 90.0, 99.0]))
    throughput = batch_size * 1000.0 / p50 if p50 > 0 else float("inf")
    return Timing(
        batch_size=batch_size,
        seq_len=seq_len,
        rounds=len(latencies_ms),
        threads=threads,
        latencies_ms=[float(v) for v in latencies_ms],
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        mean_ms=float(lat.mean()),
        throughput=throughput,
    )


def _check_args(*, batch_size: int, seq_len: int, warmup: int, rounds: int, min_time_s: float = 0.0,
                threads: int | None = None) -> None:
    for name, value, low in (("batch_size", batch_size, 1), ("seq_len", seq_len, 1), ("warmup", warmup, 0),
                             ("rounds", rounds, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise InputError(f"timing: {name} must be an integer >= {low}, got {value!r}")
    if not min_time_s >= 0:  # also rejects NaN
        raise InputError(f"timing: min_time_s must be >= 0 seconds, got {min_time_s!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))
                                or threads < 1):
        raise InputError(f"timing: threads must be None or an integer >= 1, got {threads!r}")


def _timed_call(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def time_callable(fn: Callable[[], object], *, batch_size: int, seq_len: int, warmup: int = 3, rounds: int = 10,
                  min_time_s: float = 0.0, threads: int | None = None) -> Timing:
    """Time ``fn()`` (one batch per call) and summarise the latencies.

    Runs ``warmup`` untimed calls, then timed calls until at least ``rounds`` calls were made AND their
    summed latency reaches ``min_time_s`` seconds.

    Args:
        fn: zero-argument callable running one batch; its result is discarded. Any result
            synchronisation (e.g. ``torch.cuda.synchronize()``) must happen inside ``fn``.
        batch_size: input sequences per call (>= 1); used for ``throughput``.
        seq_len: tokens per sequence (>= 1); recorded only.
        warmup: untimed calls first (>= 0).
        rounds: minimum number of timed calls (>= 1).
        min_time_s: minimum total timed seconds (>= 0).
        threads: if given, ``torch.set_num_threads(threads)`` for the duration of the run, restored
            afterwards (affects torch only; an ONNX Runtime session fixes its threads when created).

    Returns:
        :class:`Timing` with one latency (ms) per timed call.

    Raises:
        InputError: an argument is out of range. Exceptions raised by ``fn`` propagate unchanged.
    """
    _check_args(batch_size=batch_size, seq_len=seq_len, warmup=warmup, rounds=rounds, min_time_s=min_time_s,
                threads=threads)
    previous_threads = None
    torch = None
    if threads is not None:
        import torch  # lazily: timing ONNX Runtime alone must not import torch

        previous_threads = torch.get_num_threads()
        torch.set_num_threads(int(threads))
    try:
        for _ in range(warmup):
            fn()
        latencies: list[float] = []
        total_ms = 0.0
        min_total_ms = float(min_time_s) * 1000.0
        while len(latencies) < rounds or total_ms < min_total_ms:
            ms = _timed_call(fn)
            latencies.append(ms)
            total_ms += ms
    finally:
        if torch is not None:
            torch.set_num_threads(previous_threads)
    return _summarize(latencies, batch_size=batch_size, seq_len=seq_len,
                      threads=None if threads is None else int(threads))


def interleaved(fns: dict[str, Callable[[], object]], *, batch_size: int, seq_len: int, warmup: int = 3,
                rounds: int = 10, threads: int | None = None) -> dict[str, Timing]:
    """Time several contenders in turn, A B C A B C ..., so machine drift hits them alike.

    Warm-up is interleaved the same way (``warmup`` untimed passes over all contenders), then
    ``rounds`` timed passes; in every pass the contenders run in the dict's insertion order.

    Args:
        fns: name -> zero-argument callable running one batch of ``batch_size`` sequences.
        batch_size, seq_len, warmup, rounds: as in :func:`time_callable` (same for every contender).
        threads: as in :func:`time_callable`. When None, torch's setting is left as found and recorded if torch
            is already imported (the threads the run actually used), else None.

    Returns:
        name -> :class:`Timing`, in the order of ``fns``.

    Raises:
        InputError: ``fns`` is empty, a value is not callable, or an argument is out of range.
    """
    _check_args(batch_size=batch_size, seq_len=seq_len, warmup=warmup, rounds=rounds, threads=threads)
    if not fns:
        raise InputError("timing: interleaved() needs at least one callable")
    for name, fn in fns.items():
        if not callable(fn):
            raise InputError(f"timing: contender {name!r} is not callable ({type(fn).__name__})")
    items = list(fns.items())
    torch = sys.modules.get("torch")
    previous_threads = None
    if threads is not None:
        import torch  # lazily: timing ONNX Runtime alone must not import torch

        previous_threads = torch.get_num_threads()
        torch.set_num_threads(int(threads))
    try:
        used = int(torch.get_num_threads()) if torch is not None else None
        for _ in range(warmup):
            for _name, fn in items:
                fn()
        latencies: dict[str, list[float]] = {name: [] for name, _ in items}
        for _ in range(rounds):
            for name, fn in items:
                latencies[name].append(_timed_call(fn))
    finally:
        if previous_threads is not None:
            torch.set_num_threads(previous_threads)
    return {name: _summarize(lat, batch_size=batch_size, seq_len=seq_len, threads=used)
            for name, lat in latencies.items()}


def _dist_version(*names: str) -> str | None:
    """Installed version of the first distribution in ``names`` that is present, else None."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        except Exception:  # a broken installation must not fail a report
            continue
    return None


def _torch_threads() -> int | None:
    try:
        import torch

        return int(torch.get_num_threads())
    except Exception:
        return None


def cpu_model_name(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The CPU's model name: ``platform.processor()`` where it names a model, else the first ``model name`` line of
    ``cpuinfo`` (Linux, where ``platform.processor()`` is empty or just the architecture), else None."""
    try:
        name = platform.processor()
    except Exception:
        name = ""
    if name and name.strip() and name.strip() not in ("x86_64", "aarch64", "arm64", "i386", "i686"):
        return name.strip()
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip().lower() in ("model name", "cpu model", "processor name"):
                    if value.strip():
                        return value.strip()
    except OSError:
        pass
    return name.strip() or None


def environment(threads: int | None = None) -> dict:
    """Describe the machine and library versions a measurement was taken on.

    Never raises: a missing package (or one whose metadata cannot be read) is recorded as None.

    Args:
        threads: the intra-op threads the measurements used (ONNX Runtime sessions and PyTorch), if known.

    Returns:
        dict with keys ``python`` (e.g. "3.11.7"), ``torch``, ``onnxruntime`` (the ``onnxruntime``
        or ``onnxruntime-gpu`` distribution, whichever is installed), ``onnx``, ``transformers``,
        ``numpy`` (version strings or None), ``cpu_count`` (logical CPUs, ``os.cpu_count()``),
        ``cpu_affinity`` (CPUs this process may run on, or None where unsupported), ``cpu_flags``
        (:func:`cpu_isa_flags`: AVX-512 / VNNI / BF16 / AMX flags), ``openvino`` (version or None),
        ``torch_threads`` (``torch.get_num_threads()`` or None), ``threads`` (``threads`` as given),
        ``platform`` (``platform.platform()``), ``processor`` and ``cpu_model`` (the CPU model name,
        :func:`cpu_model_name`; ``processor`` keeps ``platform.processor()`` when that is not empty) and
        ``machine``.
    """
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except Exception:
        affinity = None
    info: dict = {
        "python": platform.python_version(),
        "torch": _dist_version("torch"),
        "onnxruntime": _dist_version("onnxruntime", "onnxruntime-gpu"),
        "onnx": _dist_version("onnx"),
        "transformers": _dist_version("transformers"),
        "numpy": _dist_version("numpy"),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "torch_threads": _torch_threads(),
        "threads": None if threads is None else int(threads),
    }
    for key, getter in (("platform", platform.platform), ("processor", platform.processor),
                        ("machine", platform.machine)):
        try:
            info[key] = getter()
        except Exception:
            info[key] = None
    info["cpu_model"] = cpu_model_name()
    if not info["processor"]:
        info["processor"] = info["cpu_model"]
    info["cpu_flags"] = cpu_isa_flags()
    info["openvino"] = _dist_version("openvino")
    return info


#: ``/proc/cpuinfo`` flags that decide which precisions are fast (int8 dot products, bf16 GEMMs, AMX tiles).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
             "amx_int8", "amx_bf16", "avx512_fp16")


def cpu_isa_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str] | None:
    """The :data:`ISA_FLAGS` the CPU reports (first ``flags`` line of ``cpuinfo``), in that order; None where the
    file cannot be read (not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    have = set(line.split(":", 1)[-1].split())
    return [f for f in ISA_FLAGS if f in have]
