"""The TensorRT graphs: ``model.trt.onnx`` (fp32) and its fp16 form ``model.trt.fp16.onnx``.

``model.trt.onnx`` is the exported ``model.onnx`` checked to hold standard-domain ONNX ops only: an
ORT-optimised graph (``model.ort.onnx``, ``com.microsoft`` fused ops) is refused with a clear error (fault
class F17 in docs/field-faults.md; TensorRT#1515), so the two paths never share an artifact.

TensorRT >= 10 builds *strongly typed* networks (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; always on
in TensorRT 11): precision is a property of the graph, not of builder flags. The fp16 form is therefore
produced as a graph by a library, ``onnxconverter_common.float16.convert_float_to_float16`` with
``keep_io_types=True`` (inputs stay int64, ``logits`` stays float32) and an op block list that keeps
LayerNormalization, Softmax, every Reduce*, Pow, Sqrt, Div and Erf in float32 (field fault F8 in docs/field-faults.md: fp16
LayerNorm / softmax overflow, TensorRT#2564/#3486; docs/checkpoint-formats.md E10: LN eps 1e-12
underflows in fp16, erf GELU required). The converter inserts the Casts around the blocked ops.

Both graphs run on ONNX Runtime too, which is how they are validated on machines without TensorRT: with the one
comparator of :mod:`prumux_compile.validation` (criteria ``("tensorrt", precision)``).
"""
from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import onnx

from prumux_compile.errors import EngineBuildError, InputError

__all__ = ["TRT_FILENAME", "TRT_FP16_FILENAME", "FP32_OPS", "check_standard_ops", "write_trt_onnx",
           "write_trt_onnx_fp16"]

TRT_FILENAME = "model.trt.onnx"
TRT_FP16_FILENAME = "model.trt.fp16.onnx"
#: Ops kept in float32 by the fp16 conversion (F8 in docs/field-faults.md; E10), added to the converter's own default block list.
FP32_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd",
            "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "Pow", "Sqrt", "Div",
            "Erf")
_STANDARD_DOMAINS = ("", "ai.onnx")


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def _load(path_or_model) -> onnx.ModelProto:
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model
    path = Path(path_or_model)
    if not path.is_file():
        raise InputError(f"{path}: no such ONNX file")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError and friends
        raise InputError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None


from prumux_compile.export.onnx_export import save_onnx  # noqa: E402
from prumux_compile.export.onnx_export import walk_nodes as _nodes  # noqa: E402


def check_standard_ops(path_or_model, *, what: str = "TensorRT") -> dict[str, int]:
    """Refuse any op outside the standard ONNX domain (field fault F17 in docs/field-faults.md).

    Args:
        path_or_model: an ``.onnx`` path or a loaded ``onnx.ModelProto``.
        what: the consumer named in the error.

    Returns:
        op type -> count of the (standard) graph.

    Raises:
        EngineBuildError: the graph holds ops of another domain (e.g. ``com.microsoft`` from ONNX Runtime's
            transformer optimizer) or model-local functions; the message lists them and says which file to use.
        InputError: the file is missing or unreadable.
    """
    model = _load(path_or_model)
    nodes = list(_nodes(model.graph))
    foreign = Counter(f"{n.domain}::{n.op_type}" for n in nodes if n.domain not in _STANDARD_DOMAINS)
    name = getattr(path_or_model, "name", None) or (Path(path_or_model).name if not isinstance(
        path_or_model, onnx.ModelProto) else "the model")
    if foreign or len(model.functions):
        listed = ", ".join(f"{k} x{v}" for k, v in sorted(foreign.items())) or f"{len(model.functions)} functions"
        raise EngineBuildError(f"{name}: {what} accepts standard ONNX ops only, found {listed} (F17 in docs/field-faults.md: an "
                               f"ORT-optimised graph such as model.ort.onnx cannot feed {what}; use model.onnx)")
    return dict(sorted(Counter(n.op_type for n in nodes).items()))


def write_trt_onnx(onnx_path: str | Path, out_path: str | Path | None = None) -> dict:
    """Write ``model.trt.onnx``: the exported graph, checked standard-only, with inferred shapes.

    Args:
        onnx_path: the exported ``model.onnx``.
        out_path: destination (default ``<dir of onnx_path>/model.trt.onnx``); must differ from the input.

    Returns:
        ``{"path", "ops" (op -> count), "nodes"}``.

    Raises:
        EngineBuildError: non-standard ops (F17 in docs/field-faults.md), or ONNX shape inference / the checker fails.
        InputError: unreadable input, or ``out_path`` equals ``onnx_path``.
    """
    onnx_path = Path(onnx_path)
    out_path = Path(out_path) if out_path is not None else onnx_path.parent / TRT_FILENAME
    if out_path.resolve() == onnx_path.resolve():
        raise InputError(f"{out_path}: model.trt.onnx would overwrite its input")
    model = _load(onnx_path)
    ops = check_standard_ops(model)
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises InferenceError, ValidationError, ...
        raise EngineBuildError(f"{onnx_path.name}: ONNX check before TensorRT failed: {_first_line(exc)}") from None
    save_onnx(model, out_path)  # external data beside it past the protobuf limit (F26 in docs/field-faults.md)
    return {"path": str(out_path), "ops": ops, "nodes": int(sum(ops.values()))}


def write_trt_onnx_fp16(trt_onnx_path: str | Path, out_path: str | Path | None = None, *,
                        fp32_ops: tuple[str, ...] = FP32_OPS) -> dict:
    """Write the fp16 form of ``model.trt.onnx`` (module docstring: library conversion, fp32 islands).

    Args:
        trt_onnx_path: a standard-only fp32 graph (``model.trt.onnx``).
        out_path: destination (default ``<dir>/model.trt.fp16.onnx``).
        fp32_ops: op types kept in float32 (added to the converter's default block list).

    Returns:
        ``{"path", "fp32_ops", "ops" (op -> count after conversion), "casts", "fp32_cast_nodes" (existing
        casts to float kept fp32), "fp16_initializers", "fp32_initializers", "converter_warnings" (e.g. values
        clipped to the fp16 range)}``.

    Raises:
        EngineBuildError: ``onnxconverter-common`` is missing, the conversion fails, or the result is not a
            valid standard-only graph with the same float32 ``logits`` output.
        InputError: unreadable input.
    """
    trt_onnx_path = Path(trt_onnx_path)
    out_path = Path(out_path) if out_path is not None else trt_onnx_path.parent / TRT_FP16_FILENAME
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise EngineBuildError("fp16 graph: Python package 'onnxconverter-common' is not installed "
                               "(install the [gpu] or [dev] extra)") from None
    model = _load(trt_onnx_path)
    check_standard_ops(model)
    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(fp32_ops))
    # The converter retypes the output of an existing ``Cast(to=FLOAT)`` (e.g. the int attention mask cast to
    # float) to float16 but leaves its ``to`` attribute, which makes an invalid graph; blocking those nodes BY
    # NAME keeps them fp32 and lets the converter insert the casts (blocking the op type "Cast" makes the
    # converter loop forever on its own inserted casts).
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"prumux_node_{i}"
    cast_nodes = [n.name for n in model.graph.node if n.op_type == "Cast" and any(
        a.name == "to" and a.i in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE) for a in n.attribute)]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            converted = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block,
                                                         node_block_list=cast_nodes)
        onnx.checker.check_model(converted)
    except Exception as exc:  # the converter raises plain Exceptions / AssertionErrors
        raise EngineBuildError(f"{trt_onnx_path.name}: fp16 conversion failed: {_first_line(exc)}") from None
    ops = check_standard_ops(converted)
    out_types = [o.type.tensor_type.elem_type for o in converted.graph.output]
    if out_types != [o.type.tensor_type.elem_type for o in model.graph.output]:
        raise EngineBuildError(f"{trt_onnx_path.name}: fp16 conversion changed the output types")
    save_onnx(converted, out_path)  # external data beside it past the protobuf limit (F26 in docs/field-faults.md)
    kinds = Counter(t.data_type for t in converted.graph.initializer)
    return {"path": str(out_path), "fp32_ops": list(fp32_ops), "ops": ops, "casts": ops.get("Cast", 0),
            "fp32_cast_nodes": len(cast_nodes), "fp16_initializers": kinds.get(onnx.TensorProto.FLOAT16, 0),
            "fp32_initializers": kinds.get(onnx.TensorProto.FLOAT, 0),
            "converter_warnings": sorted({str(w.message) for w in caught})[:10]}
