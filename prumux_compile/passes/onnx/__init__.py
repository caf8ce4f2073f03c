"""Graph-level passes on exported ONNX models.

* :func:`~prumux_compile.passes.onnx.ort_fusions.ort_fuse`: ONNX Runtime transformer fusions with a
  per-layer attention report (writes ``model.ort.onnx``; field fault F6 in docs/field-faults.md).
"""
from prumux_compile.passes.onnx.ort_fusions import FusionReport, ort_fuse

__all__ = ["FusionReport", "ort_fuse"]
