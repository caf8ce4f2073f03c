"""ONNX export: the declarative interface (:mod:`.spec`), the export mechanics and graph checks
(:mod:`.onnx_export`) and deterministic example inputs (:mod:`.inputs`).

This package sits below the engines (which build from its output); the checkpoint -> validated artifacts job
lives above both, in :mod:`prumux_compile.export_job`, and validation in :mod:`prumux_compile.validation`.
Attributes are imported on first use, so ``import prumux_compile.export.spec`` does not import ``onnx`` or
``torch``.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "realistic_inputs": "prumux_compile.export.inputs",
    "check_onnx": "prumux_compile.export.onnx_export",
    "export_onnx": "prumux_compile.export.onnx_export",
    "read_metadata": "prumux_compile.export.onnx_export",
    "ExportSpec": "prumux_compile.export.spec",
    "TensorSpec": "prumux_compile.export.spec",
    "make_spec": "prumux_compile.export.spec",
    "spec_for_ir": "prumux_compile.export.spec",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
