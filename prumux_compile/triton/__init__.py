"""Triton Inference Server model repositories for compiled PruMUX models.

* :func:`write_repository` — ``<repo>/<name>/config.pbtxt`` + ``1/model.onnx`` | ``1/model.plan``
  (+ ``1/model.py`` for the Python backend), validated before anything is written;
* :func:`validate_config` / :func:`check_or_raise` — a config against an ONNX graph;
  :func:`validate_plan_config` / :func:`check_plan_or_raise` — against TensorRT bindings and profiles;
* :class:`TritonServer` (in :mod:`prumux_compile.triton.server`) — a local loopback server for tests;
* :func:`~prumux_compile.triton.ensemble.write_text_ensemble` / :func:`~prumux_compile.triton.ensemble.validate_ensemble`
  (in :mod:`prumux_compile.triton.ensemble`) — the text-in, labels-out ensemble around an engine model.

Importing this package does not import onnx, onnxruntime or tritonclient until a function needs them.
"""
from __future__ import annotations

from prumux_compile.triton.interface import ModelInterface, TensorSpec, read_onnx_interface
from prumux_compile.triton.validate import (
    check_or_raise,
    check_plan_or_raise,
    validate_config,
    validate_plan_config,
)
from prumux_compile.triton.writer import write_repository

__all__ = [
    "ModelInterface",
    "TensorSpec",
    "check_or_raise",
    "check_plan_or_raise",
    "read_onnx_interface",
    "validate_config",
    "validate_plan_config",
    "write_repository",
]
