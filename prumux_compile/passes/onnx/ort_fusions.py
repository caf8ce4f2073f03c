"""ONNX Runtime transformer fusions on an exported graph, with a per-layer attention report (field fault F6 in docs/field-faults.md).

Tool: ``onnxscript.rewriter.ort_fusions.optimize_for_ort`` (rewrites into ``com.microsoft`` ops: Attention /
MultiHeadAttention, SkipLayerNormalization, BiasGelu, Gelu). measured here: ONNX Runtime's own
``optimizer.optimize_model(model_type="bert")`` takes ONE global head count (wrong for pruned layers, or no
attention fusion at all with ``num_heads=0``), while the onnxscript rewriter reads each layer's head count
from the constant reshape the exporter wrote and fused attention with per-layer heads. Measured here on the
dynamo export of the compiled model: ``optimize_model(num_heads=0)`` fused no attention at all (the
compiled model has its 1/sqrt(dh) scale folded into W_q and multiplexed encoders have no mask ``Add``), the
onnxscript rewriter fused every attention layer with its own head count.

The pass is never fatal for a layer that does not fuse: such layers are listed in the report. If the tool
itself fails, the output is the unfused graph and the report carries the error. A fused node whose head count
differs from its layer's is a wrong graph: that raises :class:`~prumux_compile.errors.EngineBuildError`.
"""
from __future__ import annotations

import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from importlib import metadata as _metadata
from pathlib import Path

import onnx

from prumux_compile.errors import EngineBuildError
from prumux_compile.export.onnx_export import onnx_data_files, save_onnx

__all__ = ["FusionReport", "ort_fuse", "TOOL"]

TOOL = "onnxscript.rewriter.ort_fusions.optimize_for_ort"
_ATTENTION_OPS = ("Attention", "MultiHeadAttention")
_MS_DOMAIN = "com.microsoft"


@dataclass
class FusionReport:
    """What the ORT fusion step did.

    Attributes:
        tool: the rewriter used (:data:`TOOL`) and its version.
        rewrites: rewrite rule -> times applied (non-zero only), as the tool counts them.
        fused_ops: ``com.microsoft`` op type -> nodes in the output graph.
        expected_attention: ``[layer, heads]`` of every layer with an attention sublayer.
        fused_attention: ``[layer, heads]`` of the layers whose attention became one fused node, by graph
            order (the k-th fused node belongs to the next layer in order with the same head count).
        unfused_layers: original indices of attention layers left unfused (reported, never fatal).
        error: the tool's failure (the output is then the unfused graph), else None.
        seconds: wall time of the step (s).
    """

    tool: str
    rewrites: dict[str, int] = field(default_factory=dict)
    fused_ops: dict[str, int] = field(default_factory=dict)
    expected_attention: list[list[int]] = field(default_factory=list)
    fused_attention: list[list[int]] = field(default_factory=list)
    unfused_layers: list[int] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _tool_version() -> str:
    try:
        return f"{TOOL} (onnxscript {_metadata.version('onnxscript')})"
    except _metadata.PackageNotFoundError:
        return TOOL


def _attention_nodes(model: onnx.ModelProto) -> list[tuple[str, int]]:
    out = []
    for node in model.graph.node:
        if node.domain == _MS_DOMAIN and node.op_type in _ATTENTION_OPS:
            heads = next((a.i for a in node.attribute if a.name == "num_heads"), 0)
            out.append((node.name or node.op_type, int(heads)))
    return out


def _match_layers(nodes: list[tuple[str, int]], expected: list[tuple[int, int]]):
    """Assign fused nodes (graph order) to layers (layer order); raise on a head count no layer has."""
    fused, unfused = [], []
    pos = 0
    for name, heads in nodes:
        start = pos
        while pos < len(expected) and expected[pos][1] != heads:
            pos += 1
        if pos == len(expected):
            layers = ", ".join(f"layer {layer}: {h}" for layer, h in expected[start:]) or "none left"
            raise EngineBuildError(
                f"ORT attention fusion produced node {name!r} with num_heads={heads}, but no remaining attention "
                f"layer has that head count ({layers}); the fused graph would compute wrong attention (F6 in docs/field-faults.md)"
            )
        unfused += [layer for layer, _ in expected[start:pos]]
        fused.append([expected[pos][0], heads])
        pos += 1
    unfused += [layer for layer, _ in expected[pos:]]
    return fused, unfused


def ort_fuse(src: str | Path, dst: str | Path, *, layer_heads: list[tuple[int, int]]) -> FusionReport:
    """Write ``dst``: ``src`` with ONNX Runtime transformer fusions applied (may hold ``com.microsoft`` ops).

    ``src`` is never modified; ``metadata_props`` are carried over.

    Args:
        src: the exported ``model.onnx``.
        dst: where to write the fused graph (``model.ort.onnx``).
        layer_heads: ``(original layer index, heads)`` of each attention layer in order (from the model's
            ``prumux.layer_heads`` metadata); fused nodes are checked against them.

    Returns:
        :class:`FusionReport`.

    Raises:
        EngineBuildError: a fused attention node has a head count that none of the remaining layers has.
    """
    src, dst = Path(src), Path(dst)
    report = FusionReport(tool=_tool_version(), expected_attention=[list(x) for x in layer_heads])
    start = time.perf_counter()
    try:
        import onnx_ir as ir
        from onnxscript.rewriter.ort_fusions import optimize_for_ort

        model = ir.load(str(src))
        model, counts = optimize_for_ort(model)
        # weights in src's external-data file go to dst's own (F26 in docs/field-faults.md): dst never depends on src's files
        ir.save(model, str(dst), external_data=dst.name + ".data" if onnx_data_files(src) else None)
        report.rewrites = {k: int(v) for k, v in sorted(counts.items()) if v}
    except Exception as exc:  # never fatal: fall back to the unfused graph and report why
        report.error = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
        if onnx_data_files(src):
            save_onnx(onnx.load(str(src)), dst, external=True)
        else:
            shutil.copyfile(src, dst)
    report.seconds = time.perf_counter() - start
    fused_model = onnx.load(str(dst), load_external_data=False)
    ops = Counter(n.op_type for n in fused_model.graph.node if n.domain == _MS_DOMAIN)
    report.fused_ops = dict(sorted(ops.items()))
    report.fused_attention, report.unfused_layers = _match_layers(_attention_nodes(fused_model),
                                                                  [tuple(x) for x in layer_heads])
    return report
