"""Registry of engine backends by name.

Backends are imported lazily (``"module:Class"`` targets), so asking for one never imports another's heavy
dependencies. A backend whose module is not part of this installation, whose Python package is missing or
whose device is absent still appears in :func:`names` and reports ``available() -> (False, reason)``; it
never fails a build that did not ask for it.
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from prumux_compile.engines.base import Artifact, Backend, Compiled, EngineConfig, Runner
from prumux_compile.errors import EngineBuildError, InputError

__all__ = ["names", "get", "register", "availability", "Unavailable"]

#: name -> "module:Class": THE list of backends. A new backend is its module plus one line here.
_TARGETS: dict[str, str] = {
    "ort-cpu": "prumux_compile.engines.onnxruntime:OrtCpuBackend",
    "ort-cuda": "prumux_compile.engines.onnxruntime:OrtCudaBackend",
    "torch-cuda": "prumux_compile.engines.torch_cuda:TorchCudaBackend",
    "tensorrt": "prumux_compile.engines.tensorrt:TensorRTBackend",
    "openvino": "prumux_compile.engines.openvino:OpenVinoBackend",
}


def _probe_torch_cuda() -> str | None:
    try:
        import torch
    except ImportError:
        return "Python package 'torch' is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    return None


def _probe_tensorrt() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return ("Python package 'tensorrt' is not installed (its wheels download the libraries from NVIDIA's "
                "index at install time)")
    return _probe_torch_cuda()


def _probe_openvino() -> str | None:
    if importlib.util.find_spec("openvino") is None:
        return "Python package 'openvino' is not installed (install the [openvino] extra)"
    return None


#: Package / device probes for backends whose module may not exist yet: the reason that comes first.
_PROBES = {"torch-cuda": _probe_torch_cuda, "tensorrt": _probe_tensorrt, "openvino": _probe_openvino}


class Unavailable(Backend):
    """Stand-in for a backend that cannot be used here; ``build``/``load`` raise :class:`EngineBuildError`."""

    def __init__(self, name: str, reason: str):
        self.name = name
        self.reason = reason

    def available(self) -> tuple[bool, str]:
        return False, self.reason

    def build(self, compiled: Compiled | str | Path, config: EngineConfig | None = None) -> Artifact:
        raise EngineBuildError(f"backend {self.name} is unavailable: {self.reason}")

    def load(self, artifact: Artifact) -> Runner:
        raise EngineBuildError(f"backend {self.name} is unavailable: {self.reason}")


def names() -> list[str]:
    """Every registered backend name (available or not), sorted."""
    return sorted(_TARGETS)


def register(name: str, target) -> None:
    """Register (or replace) a backend: a :class:`Backend` subclass, a zero-argument factory returning a
    :class:`Backend`, or a ``"module:Class"`` string. A class or factory reports its own availability (the
    package/device probe of a built-in name no longer applies to it)."""
    if isinstance(target, str) and ":" not in target:
        raise InputError(f"backend target {target!r}: expected 'module:Class'")
    _TARGETS[name] = target  # type: ignore[assignment]


def get(name: str) -> Backend:
    """The backend registered as ``name`` (an :class:`Unavailable` one when it cannot be used here).

    Raises:
        InputError: no backend of that name (the message lists the registered names).
    """
    target = _TARGETS.get(name)
    if target is None:
        raise InputError(f"unknown backend {name!r}; registered: {', '.join(names())}")
    probe = _PROBES.get(name) if isinstance(target, str) else None
    reason = probe() if probe else None
    if reason:
        return Unavailable(name, reason)
    if not isinstance(target, str):
        return target()
    module_name, cls_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        what = ("not implemented in this version of prumux-compile" if missing == module_name
                else f"Python package {missing!r} is not installed")
        return Unavailable(name, what)
    return getattr(module, cls_name)()


def availability() -> dict[str, tuple[bool, str]]:
    """``{name: (available, reason or description)}`` for every registered backend."""
    return {name: get(name).available() for name in names()}
