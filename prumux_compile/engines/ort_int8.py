"""int8 graphs for the ``ort-cpu`` engine, made with ONNX Runtime's own quantization tools
(:mod:`onnxruntime.quantization`); no quantization arithmetic of ours.

Two forms, both with per-channel int8 weights (one scale per output column of each weight matrix):

* **dynamic** (:func:`onnxruntime.quantization.quantize_dynamic`): weights int8 offline, activations quantized
  to uint8 at run time per tensor from their observed range (``DynamicQuantizeLinear`` + ``MatMulInteger``;
  ``QAttention`` for a fused ``Attention`` node). Made from ``model.onnx`` and from the fused ``model.ort.onnx``.
* **static QDQ** (:func:`onnxruntime.quantization.quantize_static`, ``QuantFormat.QDQ``): activation ranges
  calibrated offline (min/max) on *calibration inputs* (the build's evaluation texts or the demo's train split,
  tokenised as the build tokenises them), written as QuantizeLinear / DequantizeLinear pairs that ONNX Runtime
  fuses into integer kernels. Made from ``model.onnx``.

What is quantized: only the weight GEMMs of the encoder layers (``MatMul`` nodes with a constant weight, named
``/layers.K/...`` by the exporter, and fused ``Attention`` nodes). Kept in float32: the embeddings (``Gather``),
the multiplexer, the demultiplexer, the pooler and the classifier (every GEMM outside ``/layers.``), LayerNorm,
softmax, GELU, the residual stream and the two activation-by-activation products of attention (Q·Kᵀ and
softmax·V, excluded by ``MatMulConstBOnly``). Those are a small share of the FLOPs (the mux/demux and classifier
are < 1 % of BERT-base's) and the multiplexer's Hadamard mixing / the demultiplexer's instance separation are where
N instances share one vector: the place where a coarse grid would hurt most.

``reduce_range`` (7-bit weights) is used only on CPUs without AVX-512 VNNI / AVX-VNNI, where the u8·s8 AVX2
kernels can saturate (ONNX Runtime's quantization guide); this CPU has VNNI.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from prumux_compile.errors import EngineBuildError, InputError

__all__ = ["INT8_FORMS", "encoder_gemm_nodes", "quantize_graph", "cpu_has_vnni", "calibration_feeds"]

#: int8 forms: name -> (source graph role, quantization) ; file ``model.<name>.onnx``.
INT8_FORMS: dict[str, tuple[str, str]] = {
    "int8-dynamic": ("plain", "dynamic"),
    "int8-dynamic-fused": ("fused", "dynamic"),
    "int8-static": ("plain", "static"),
}

#: Op types whose constant-weight instances are quantized (inside the encoder layers only).
_QUANTIZED_OPS = ("MatMul", "Attention")
_ENCODER_PREFIX = "/layers."


def cpu_has_vnni() -> bool:
    """True when the CPU reports AVX-512 VNNI or AVX-VNNI (``/proc/cpuinfo`` flags; False where unreadable)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_vnni" in flags or " avx_vnni" in flags


def encoder_gemm_nodes(model) -> tuple[list[str], list[str]]:
    """Split the quantizable nodes of ``model`` (an ``onnx.ModelProto``) into (quantized, kept in float32).

    Quantized: ``MatMul`` nodes of the encoder layers (name starts with ``/layers.``) and every fused
    ``Attention`` node (ORT's fusion only fuses encoder attention). Kept: every other ``MatMul`` / ``Gemm``
    (multiplexer, demultiplexer, pooler, classifier).
    """
    quantized, kept = [], []
    for node in model.graph.node:
        if node.op_type == "Attention" or (node.op_type == "MatMul" and node.name.startswith(_ENCODER_PREFIX)):
            quantized.append(node.name)
        elif node.op_type in ("MatMul", "MultiHeadAttention"):
            kept.append(node.name)
        elif node.op_type == "Gemm":  # the quantizer rewrites Gemm as MatMul "<name>_MatMul" (+ Add) first
            kept.extend((node.name, node.name + "_MatMul"))
    return quantized, kept


class _Reader:
    """``onnxruntime.quantization.CalibrationDataReader`` over fixed feeds, ``batch`` rows at a time."""

    def __init__(self, feeds: dict[str, np.ndarray], input_names: list[str], batch: int):
        self.feeds = {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in feeds.items() if k in input_names}
        self.rows = next(iter(self.feeds.values())).shape[0]
        self.batch = max(1, int(batch))
        self.pos = 0

    def get_next(self):
        if self.pos >= self.rows:
            return None
        chunk = {k: v[self.pos : self.pos + self.batch] for k, v in self.feeds.items()}
        self.pos += self.batch
        return chunk

    def rewind(self):
        self.pos = 0


def calibration_feeds(feeds: dict | None, fallback: dict[str, np.ndarray], limit: int = 64) -> dict[str, np.ndarray]:
    """The calibration inputs: the first ``limit`` rows of ``feeds`` (``input_ids`` / ``attention_mask`` /
    ``token_type_ids`` int64 ``[rows, S]``), else ``fallback``.

    Raises:
        InputError: ``feeds`` without ``input_ids``, or not 2-D.
    """
    if feeds is None:
        return fallback
    if "input_ids" not in feeds:
        raise InputError("calibration feeds lack 'input_ids'")
    out = {k: np.asarray(v)[:limit] for k, v in feeds.items()}
    if any(v.ndim != 2 for v in out.values()):
        raise InputError("calibration feeds must be [rows, sequence] arrays")
    return out


def quantize_graph(form: str, source: Path, target: Path, *, calibration: dict[str, np.ndarray] | None,
                   batch: int) -> dict:
    """Write the int8 ``form`` (a key of :data:`INT8_FORMS`) of ``source`` to ``target``.

    Args:
        form: ``"int8-dynamic"``, ``"int8-dynamic-fused"`` or ``"int8-static"``.
        source: the float32 graph (``model.onnx`` or ``model.ort.onnx``).
        target: output path (must differ from ``source``).
        calibration: static form only: int64 feeds ``[rows, S]`` run through the float32 graph to fix the
            activation ranges (``batch`` rows per run).
        batch: rows per calibration run.

    Returns:
        Report: ``form``, ``method``, ``per_channel``, ``reduce_range``, ``quantized_nodes`` (count),
        ``kept_fp32`` (node names kept in float32), ``calibration_rows``.

    Raises:
        EngineBuildError: ONNX Runtime's quantizer failed (message names the form), or the static form was asked
            for without calibration inputs.
    """
    import onnx
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    if form not in INT8_FORMS:
        raise InputError(f"int8 form {form!r}: expected one of {', '.join(INT8_FORMS)}")
    if Path(target).resolve() == Path(source).resolve():
        raise EngineBuildError(f"int8: the quantized graph would overwrite its source {source}")
    method = INT8_FORMS[form][1]
    model = onnx.load(str(source), load_external_data=False)
    quantized, kept = encoder_gemm_nodes(model)
    del model
    reduce_range = not cpu_has_vnni()
    target.unlink(missing_ok=True)
    extra = {"MatMulConstBOnly": True}
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer's root-logger advice ("consider pre-processing") on every call
    try:
        if method == "dynamic":
            quantize_dynamic(str(source), str(target), op_types_to_quantize=list(_QUANTIZED_OPS), per_channel=True,
                             reduce_range=reduce_range, weight_type=QuantType.QInt8, nodes_to_exclude=kept,
                             extra_options=extra)
            rows = 0
        else:
            if not calibration:
                raise EngineBuildError(f"{form}: static quantization needs calibration inputs")
            import onnxruntime as ort

            names = [i.name for i in ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).get_inputs()]
            reader = _Reader(calibration, names, batch)
            rows = reader.rows
            quantize_static(str(source), str(target), reader, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["MatMul"], per_channel=True, reduce_range=reduce_range,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=kept,
                            calibrate_method=CalibrationMethod.MinMax,
                            extra_options={**extra, "WeightSymmetric": True, "ActivationSymmetric": False})
    except EngineBuildError:
        raise
    except Exception as exc:  # the quantizer raises assorted exception types
        target.unlink(missing_ok=True)
        msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise EngineBuildError(f"onnxruntime.quantization failed to write the {form} graph: {msg}") from None
    finally:
        root.setLevel(level)
    if not target.is_file():
        raise EngineBuildError(f"onnxruntime.quantization wrote no {form} graph")
    return {"form": form, "method": method, "source": Path(source).name, "per_channel": True,
            "reduce_range": reduce_range, "weights": "int8 symmetric per channel",
            "activations": "uint8 per tensor, " + ("range at run time" if method == "dynamic"
                                                   else "min/max calibrated"),
            "quantized_nodes": len(quantized), "kept_fp32": kept, "calibration_rows": rows}
