"""The TensorRT graphs: ``model.trt.onnx`` (fp32) and its fp16 form ``model.trt.fp16.onnx``, plus their
validation with ONNX Runtime (CPU) against the reference.

``model.trt.onnx`` is the exported ``model.onnx`` checked to hold standard-domain ONNX ops only: an
ORT-optimised graph (``model.ort.onnx``, ``com.microsoft`` fused ops) is refused with a clear error (fault
class F17; TensorRT#1515), so the two paths never share an artifact.

TensorRT >= 10 builds *strongly typed* networks (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; always on
in TensorRT 11): precision is a property of the graph, not of builder flags. The fp16 form is therefore
produced as a graph by a library, ``onnxconverter_common.float16.convert_float_to_float16`` with
``keep_io_types=True`` (inputs stay int64, ``logits`` stays float32) and an op block list that keeps
LayerNormalization, Softmax, every Reduce*, Pow, Sqrt, Div and Erf in float32 (fault class F8: fp16
LayerNorm / softmax overflow, TensorRT#2564/#3486; spec ``docs/checkpoint-formats.md`` E10: LN eps 1e-12
underflows in fp16, erf GELU required). The converter inserts the Casts around the blocked ops.

Fidelity (DESIGN.md "Fidelity"): logits are compared with :func:`prumux_compile.reference.forward` (float64)
on the same inputs. :data:`TOLERANCES` holds the per-precision criteria; any NaN/Inf fails.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from prumux_compile.errors import EngineBuildError, InputError, ValidationError

__all__ = ["TRT_FILENAME", "TRT_FP16_FILENAME", "FP32_OPS", "Tolerance", "TOLERANCES", "check_standard_ops",
           "write_trt_onnx", "write_trt_onnx_fp16", "fidelity", "validation_batches", "validate_onnx"]

TRT_FILENAME = "model.trt.onnx"
TRT_FP16_FILENAME = "model.trt.fp16.onnx"
#: Ops kept in float32 by the fp16 conversion (F8; E10), added to the converter's own default block list.
FP32_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd",
            "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "Pow", "Sqrt", "Div",
            "Erf")
_STANDARD_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class Tolerance:
    """Fidelity criteria of one precision against the float64 reference.

    A run passes when every logit is finite, ``|out - ref| <= atol + rtol * |ref|`` element-wise, and (when
    ``min_agreement`` is set) the argmax agrees with the reference's on at least that fraction of rows.

    Attributes:
        atol: absolute tolerance on logits (logit units).
        rtol: relative tolerance (fraction of ``|ref|``).
        min_agreement: minimum argmax agreement in [0, 1], or None (not checked).
    """

    atol: float
    rtol: float = 0.0
    min_agreement: float | None = None


#: DESIGN.md "Fidelity": fp32 within 1e-4 absolute; fp16/bf16: per-precision tolerance plus argmax agreement
#: >= 99.5% (checkpoint-formats.md §7 oracle 1). fp16 has a 2^-11 unit roundoff, bf16 2^-8: after a dozen
#: layers the logit error is a few 1e-3 (fp16) resp. a few 1e-2 (bf16) at O(1) logits, hence the bounds.
#: ``fp32-cuda`` is the CUDA engine's fp32 bound (different GEMM reduction order than the CPU reference).
TOLERANCES = {
    "fp32": Tolerance(atol=1e-4),
    "fp32-cuda": Tolerance(atol=1e-3),
    "fp16": Tolerance(atol=5e-2, rtol=2e-2, min_agreement=0.995),
    "bf16": Tolerance(atol=2e-1, rtol=5e-2, min_agreement=0.995),
}


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
    """Refuse any op outside the standard ONNX domain (fault class F17).

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
        raise EngineBuildError(f"{name}: {what} accepts standard ONNX ops only, found {listed} (F17: an "
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
        EngineBuildError: non-standard ops (F17), or ONNX shape inference / the checker fails.
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
    save_onnx(model, out_path)  # external data beside it past the protobuf limit (F26)
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
    save_onnx(converted, out_path)  # external data beside it past the protobuf limit (F26)
    kinds = Counter(t.data_type for t in converted.graph.initializer)
    return {"path": str(out_path), "fp32_ops": list(fp32_ops), "ops": ops, "casts": ops.get("Cast", 0),
            "fp32_cast_nodes": len(cast_nodes), "fp16_initializers": kinds.get(onnx.TensorProto.FLOAT16, 0),
            "fp32_initializers": kinds.get(onnx.TensorProto.FLOAT, 0),
            "converter_warnings": sorted({str(w.message) for w in caught})[:10]}


def fidelity(out, ref, precision: str) -> dict:
    """Compare logits with the reference under :data:`TOLERANCES` ``[precision]``.

    Args:
        out: engine logits, float array ``[B, C]``.
        ref: reference logits, float array ``[B, C]`` (float64 preferred).
        precision: a key of :data:`TOLERANCES`.

    Returns:
        ``{"precision", "rows", "max_abs_diff", "max_excess" (largest ``|d| - (atol + rtol|ref|)``, <= 0 when
        within tolerance), "argmax_agreement", "finite", "ok", "tolerance"}``.

    Raises:
        InputError: unknown precision or shapes that differ.
    """
    if precision not in TOLERANCES:
        raise InputError(f"precision {precision!r}: expected one of {', '.join(TOLERANCES)}")
    tol = TOLERANCES[precision]
    a = np.asarray(out, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    if a.shape != r.shape or a.ndim != 2:
        raise InputError(f"fidelity: logits shape {a.shape} vs reference {r.shape} (expected equal [B, C])")
    finite = bool(np.isfinite(a).all())
    diff = np.abs(a - r)
    max_abs = float(diff.max()) if finite and a.size else (float("inf") if not finite else 0.0)
    excess = float((diff - (tol.atol + tol.rtol * np.abs(r))).max()) if finite and a.size else float("inf")
    agree = float(np.mean(a.argmax(1) == r.argmax(1))) if finite and a.shape[1] >= 2 else (
        1.0 if finite else 0.0)
    ok = finite and excess <= 0 and (tol.min_agreement is None or agree >= tol.min_agreement)
    return {"precision": precision, "rows": int(a.shape[0]), "max_abs_diff": max_abs, "max_excess": excess,
            "argmax_agreement": agree, "finite": finite, "ok": bool(ok), "tolerance": asdict(tol)}


def validation_batches(num_instances: int, extra: int = 64) -> list[int]:
    """Batch sizes to validate at: {1, N-1, N, 2N+1} (F15, F18; N-1 dropped when 0) plus ``extra`` rows for a
    meaningful argmax agreement (0 = none)."""
    n = int(num_instances)
    sizes = [1, n - 1, n, 2 * n + 1] + ([int(extra)] if extra else [])
    return sorted({s for s in sizes if s >= 1})


def validate_onnx(onnx_path: str | Path, raw, *, precision: str, seq_len: int, seq: int | None = None,
                  batches: list[int] | None = None, seed: int = 0, threads: int | None = None) -> dict:
    """Run an ONNX graph with ONNX Runtime (CPU provider) and compare it with the float64 reference.

    Args:
        onnx_path: ``model.trt.onnx`` / ``model.trt.fp16.onnx`` (any graph with the exported interface).
        raw: the checkpoint (:func:`prumux_compile.checkpoint.read_raw`) the graph was compiled from.
        precision: a key of :data:`TOLERANCES` (``"fp32"`` or ``"fp16"`` here).
        seq_len: compiled sequence length of a multiplexed model (passed to the reference).
        seq: input length (tokens) of the validation batches (default ``seq_len``).
        batches: batch sizes (default :func:`validation_batches`).
        seed: seed of :func:`prumux_compile.export.inputs.realistic_inputs`.
        threads: ORT intra-op threads (None = default).

    Returns:
        ``{"path", "precision", "batches": [fidelity dicts with "batch"], "rows", "max_abs_diff",
        "argmax_agreement" (over all rows), "ok"}``.

    Raises:
        ValidationError: any batch outside tolerance, NaN/Inf logits, or argmax agreement over all rows below
            the bound (exit 3).
        EngineBuildError: ONNX Runtime cannot load the graph.
    """
    import onnxruntime as ort
    import torch

    from prumux_compile import reference
    from prumux_compile.export.inputs import realistic_inputs

    onnx_path = Path(onnx_path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or 0)
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise EngineBuildError(f"onnxruntime cannot load {onnx_path.name}: {_first_line(exc)}") from None
    names = [i.name for i in session.get_inputs()]
    n = int(getattr(raw, "num_instances", 1) or 1)
    vocab = int(raw.state_dict["bert.embeddings.word_embeddings.weight"].shape[0])
    length = int(seq or seq_len)
    results, outs, refs = [], [], []
    for i, b in enumerate(batches or validation_batches(n)):
        feeds = realistic_inputs(b, length, vocab, seed=seed + i, type_vocab_size=int(
            raw.state_dict["bert.embeddings.token_type_embeddings.weight"].shape[0]))  # F20
        (logits,) = session.run(None, {k: v for k, v in feeds.items() if k in names})
        ref = reference.forward(raw, feeds["input_ids"], feeds["attention_mask"], feeds["token_type_ids"],
                                seq_len=seq_len, dtype=torch.float64).numpy()
        res = fidelity(logits, ref, precision)
        results.append({"batch": b, **res})
        outs.append(np.asarray(logits, dtype=np.float64))
        refs.append(ref)
    total = fidelity(np.concatenate(outs), np.concatenate(refs), precision)
    # tolerance and finiteness per batch; argmax agreement over all rows (a 1-row batch has no useful ratio)
    within = [r["finite"] and r["max_excess"] <= 0 for r in results]
    report = {"path": str(onnx_path), "precision": precision, "batches": results, "rows": total["rows"],
              "max_abs_diff": total["max_abs_diff"], "argmax_agreement": total["argmax_agreement"],
              "ok": all(within) and total["ok"]}
    if not report["ok"]:
        bad = next((r for r, w in zip(results, within) if not w), total)
        why = ("NaN/Inf in logits" if not bad["finite"] else
               f"max |diff| {bad['max_abs_diff']:.3g} (tolerance atol {bad['tolerance']['atol']:g} + rtol "
               f"{bad['tolerance']['rtol']:g}·|ref|), argmax agreement {bad['argmax_agreement']:.4f}")
        raise ValidationError(f"{onnx_path.name} ({precision}) disagrees with the reference at batch "
                              f"{bad.get('batch', 'all')}: {why}")
    return report
