"""ONNX export mechanics and the structural checks of an exported graph.

Exporter choice (``exporter=``): both exporters match PyTorch to ~1e-7 and both write the
per-layer head count as a constant into the attention reshapes (the kernels use static widths everywhere).

* ``"torchscript"`` (default): ``torch.onnx.export(..., dynamo=False)``. Deprecated upstream, but it exports a
  MiniLM-sized model in ~1 s where the dynamo exporter takes 15–50 s on these 2-core machines (measured side
  by side), which decides whether ``build`` over a grid of checkpoints fits its time budget. It prunes inputs
  a family ignores; :func:`_apply_interface` puts them back as (unused) graph inputs.
* ``"dynamo"``: ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript), kept selectable and tested.

Models past the 2 GiB protobuf limit (field fault F26 in docs/field-faults.md, onnx#3275): when the weights reach
:data:`EXTERNAL_DATA_THRESHOLD` bytes, :func:`export_onnx` writes them to one external-data file beside the model
(``model.onnx.data``; ONNX Runtime, Triton and :func:`save_onnx` / :func:`onnx_data_files` find it by the relative
location recorded in the graph). Every step that copies or rewrites a model carries that file along. Memory: the
exported graph is held once in memory while its interface is set (about the size of the weights).

Checks after export (:func:`check_onnx`, raising :class:`~prumux_compile.errors.EngineBuildError`):
``onnx.checker`` full check (strict shape inference), opset >= 17, standard ONNX domain only, no model-local
functions, no ``If`` / ``Loop`` node anywhere (F19 in docs/field-faults.md), the declared interface with symbolic batch / sequence
axes on every input and on the output (F13 in docs/field-faults.md).
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections import Counter
from importlib import metadata as _metadata
from pathlib import Path

import numpy as np
import onnx
import torch

from prumux_compile.errors import EngineBuildError, InputError
from prumux_compile.export.inputs import realistic_inputs
from prumux_compile.export.spec import BATCH_AXIS, MIN_OPSET, ExportSpec

__all__ = ["export_onnx", "check_onnx", "read_metadata", "tool_version", "EXPORTER", "save_onnx", "onnx_data_files",
           "copy_onnx", "EXTERNAL_DATA_THRESHOLD"]

#: The exporters (see module docstring); the first is the default.
EXPORTERS = {"torchscript": "torch.onnx.export(dynamo=False)", "dynamo": "torch.onnx.export(dynamo=True)"}
EXPORTER = EXPORTERS["torchscript"]
_STANDARD_DOMAINS = ("", "ai.onnx")
_FORBIDDEN_OPS = ("If", "Loop")
_ONNX_DTYPES = {"int64": onnx.TensorProto.INT64, "float32": onnx.TensorProto.FLOAT}
#: Weight bytes from which a model is saved with external data (field fault F26 in docs/field-faults.md). A protobuf message cannot exceed
#: 2 GiB; the graph itself needs room beside the weights, hence the 256 MiB margin. A module constant so that tests
#: can lower it and exercise the external-data path on a tiny model.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**28
#: Loggers that print progress or harmless warnings during a dynamo export (silenced while it runs).
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch.fx", "onnxscript", "onnx_ir")


def tool_version() -> str:
    """The installed ``prumux-compile`` version (``"unknown"`` when not installed as a distribution)."""
    try:
        return _metadata.version("prumux-compile")
    except _metadata.PackageNotFoundError:
        return "unknown"


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's stdout progress lines, its warnings and its INFO/WARNING log records."""
    saved = {}
    for name in _NOISY_LOGGERS:
        lg = logging.getLogger(name)
        saved[name] = lg.level
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _example_inputs(spec: ExportSpec) -> tuple[torch.Tensor, ...]:
    feeds = realistic_inputs(spec.example_batch, spec.example_seq, spec.vocab_size, seed=0,
                             type_vocab_size=spec.type_vocab_size)
    return tuple(torch.from_numpy(feeds[name]) for name in spec.input_names)


def export_onnx(module: torch.nn.Module, spec: ExportSpec, path: str | Path, *, opset: int = 17,
                exporter: str = "torchscript") -> dict:
    """Export a compiled model to a single-file ONNX model with the interface of ``spec``.

    Args:
        module: a :class:`~prumux_compile.kernels.CompiledModel` (eval mode, CPU, float32) whose forward is
            ``(input_ids, attention_mask, token_type_ids) -> logits``.
        spec: its :class:`~prumux_compile.export.spec.ExportSpec` (names, dynamic axes, example shapes).
        path: the ``.onnx`` file to write (parent directory must exist; replaced if present).
        opset: default-domain opset, >= 17.
        exporter: ``"torchscript"`` or ``"dynamo"`` (module docstring).

    Returns:
        ``{"exporter", "opset", "path", "external_data"}`` (the external-data file name beside ``path``, or None).

    Writes into the model: graph input/output ``doc_string`` (ignored inputs say so), ``model.doc_string``,
    ``metadata_props`` from :meth:`ExportSpec.metadata`; the output's batch axis is named ``batch`` (the
    exporter names it after its own symbolic expression).

    Raises:
        InputError: ``opset < 17`` or an unknown exporter.
        EngineBuildError: the exporter failed (message names the exception).
    """
    if int(opset) < MIN_OPSET:
        raise InputError(f"--opset {opset}: must be >= {MIN_OPSET} (LayerNormalization is standard from 17)")
    if exporter not in EXPORTERS:
        raise InputError(f"exporter {exporter!r}: expected one of {', '.join(EXPORTERS)}")
    path = Path(path)
    example = _example_inputs(spec)
    batch = torch.export.Dim(BATCH_AXIS, min=1)
    seq = torch.export.Dim("sequence", min=1, max=spec.max_seq_len)
    dynamic_shapes = {name: {0: batch, 1: seq} for name in spec.input_names}
    with tempfile.TemporaryDirectory(prefix="prumux-export-") as tmp:
        raw_path = Path(tmp) / "exported.onnx"
        try:
            with _quiet(), torch.no_grad():
                if exporter == "dynamo":
                    torch.onnx.export(module, example, str(raw_path), dynamo=True, dynamic_shapes=dynamic_shapes,
                                      input_names=list(spec.input_names), output_names=list(spec.output_names),
                                      opset_version=int(opset), optimize=True, verbose=False)
                else:
                    torch.onnx.export(module, example, str(raw_path), dynamo=False,
                                      dynamic_axes=spec.dynamic_axes, input_names=list(spec.input_names),
                                      output_names=list(spec.output_names), opset_version=int(opset),
                                      do_constant_folding=True)
        except OSError as exc:  # disk full, read-only or unwritable temp/output location: the user's to fix (exit 2)
            from prumux_compile.errors import InputError
            from prumux_compile.fsutil import describe_os_error

            if exc.filename is None:
                exc.filename = str(raw_path)
            raise InputError(f"ONNX export could not write: {describe_os_error(exc)}") from None
        except Exception as exc:  # the exporter raises many unrelated types
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise EngineBuildError(f"ONNX export failed ({type(exc).__name__}: {first})") from exc
        model = onnx.load(str(raw_path))  # inlines external data, if the exporter wrote any
        _apply_interface(model, spec)
        data = save_onnx(model, path)
    return {"exporter": EXPORTERS[exporter], "opset": _default_opset(model), "path": str(path),
            "external_data": data}


def _tensor_bytes(t: onnx.TensorProto) -> int:
    return int(np.prod(t.dims, dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def _weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of every initializer and ``Constant`` tensor of ``model`` (subgraphs included), from their shapes."""
    total = sum(_tensor_bytes(t) for t in model.graph.initializer)
    for node in walk_nodes(model.graph):
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                total += _tensor_bytes(a.t)
    return total


def onnx_data_files(path: str | Path) -> list[Path]:
    """The external-data files an ONNX model refers to, as paths beside it (empty when self-contained).

    Raises:
        InputError: the model cannot be read, a location leaves the model's folder, or a file is missing.
    """
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise InputError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    out: list[Path] = []
    tensors = list(model.graph.initializer)
    for node in walk_nodes(model.graph):
        for a in node.attribute:
            tensors += [a.t] if a.type == onnx.AttributeProto.TENSOR else list(a.tensors)
    for t in tensors:
        if uses_external_data(t):
            loc = Path(ExternalDataInfo(t).location)
            if loc.is_absolute() or ".." in loc.parts:
                raise InputError(f"{path}: external data location {str(loc)!r} is outside the model's folder")
            if path.parent / loc not in out:
                out.append(path.parent / loc)
    for f in out:
        if not f.is_file():
            raise InputError(f"{path}: its external data file {f.name} is missing; copy it next to the model")
    return out


def save_onnx(model: onnx.ModelProto, path: str | Path, *, external: bool | None = None) -> str | None:
    """Save ``model`` to ``path``; its weights go to the external-data file ``<path name>.data`` beside it when they
    reach :data:`EXTERNAL_DATA_THRESHOLD` bytes (or when ``external`` is True) — field fault F26 in docs/field-faults.md.

    ``model`` must hold its tensor data in memory (loaded with ``load_external_data=True``); saving with external
    data moves that data out of ``model`` (it then refers to the file). A previous data file of that name is
    replaced, never appended to.

    Returns:
        the external-data file name, or None for a self-contained model.
    """
    path = Path(path)
    if external is None:
        external = _weight_bytes(model) >= EXTERNAL_DATA_THRESHOLD
    data = path.name + ".data"
    if (path.parent / data).exists():
        (path.parent / data).unlink()  # onnx appends to an existing data file
    if not external:
        onnx.save_model(model, str(path))
        return None
    # tensors under 1 KiB (shapes, axes: what shape inference reads) stay in the graph, as onnx does by default
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data,
                    size_threshold=1024, convert_attribute=False)
    return data


def copy_onnx(src: str | Path, dst: str | Path) -> list[Path]:
    """Copy a model and its external-data files (under the locations it records) to ``dst`` and ``dst``'s folder.

    Returns:
        the files written (the model first).
    """
    import shutil

    src, dst = Path(src), Path(dst)
    written = [dst]
    shutil.copyfile(src, dst)
    for f in onnx_data_files(src):
        target = dst.parent / f.relative_to(src.parent)
        if target.resolve() != f.resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
        written.append(target)
    return written


def _apply_interface(model: onnx.ModelProto, spec: ExportSpec) -> None:
    """Names, docs and metadata of ``spec`` on an exported model (see :func:`export_onnx`)."""
    graph = model.graph
    present = {v.name for v in graph.input}
    for t in spec.inputs:
        if t.name not in present:  # an exporter that pruned an unused input: put it back (still valid ONNX)
            graph.input.append(onnx.helper.make_tensor_value_info(t.name, _ONNX_DTYPES[t.dtype], list(t.axes)))
    by_name = {t.name: t for t in spec.inputs + spec.outputs}
    for value in list(graph.input) + list(graph.output):
        t = by_name.get(value.name)
        if t is None:
            continue
        value.doc_string = t.doc
        dims = value.type.tensor_type.shape.dim
        for i, axis in enumerate(t.axes):
            # rename symbolic axes only: a specialised (static) axis stays static so check_onnx reports it (F13 in docs/field-faults.md)
            if i < len(dims) and isinstance(axis, str) and not dims[i].HasField("dim_value"):
                dims[i].dim_param = axis
    model.doc_string = (
        f"prumux-compile export of a {spec.family} classifier (N={spec.num_instances}). Inputs: "
        + ", ".join(spec.input_names) + f" (int64 [batch, sequence], sequence <= {spec.max_seq_len}); output: "
        "logits (float32 [batch, num_labels]). "
        + (f"Ignored inputs: {', '.join(spec.ignored_inputs)}." if spec.ignored_inputs else "All inputs used.")
    )
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, spec.metadata(tool_version()))


def _default_opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in _STANDARD_DOMAINS), default=0)


def walk_nodes(graph: onnx.GraphProto):
    """Every node of ``graph`` including nodes of subgraphs held in attributes."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from walk_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from walk_nodes(g)


def _interface_problems(model: onnx.ModelProto, spec: ExportSpec) -> list[str]:
    problems = []
    for values, specs, what in ((model.graph.input, spec.inputs, "input"), (model.graph.output, spec.outputs,
                                                                             "output")):
        names = [v.name for v in values]
        if names != [t.name for t in specs]:
            problems.append(f"graph {what}s are {names}, expected {[t.name for t in specs]}")
            continue
        for value, t in zip(values, specs):
            tt = value.type.tensor_type
            if tt.elem_type != _ONNX_DTYPES[t.dtype]:
                problems.append(f"{what} {t.name} has element type {onnx.TensorProto.DataType.Name(tt.elem_type)}, "
                                f"expected {t.dtype}")
            dims = list(tt.shape.dim)
            if len(dims) != len(t.axes):
                problems.append(f"{what} {t.name} has rank {len(dims)}, expected {len(t.axes)}")
                continue
            for i, (dim, axis) in enumerate(zip(dims, t.axes)):
                if isinstance(axis, str) and (dim.HasField("dim_value") or dim.dim_param != axis):
                    got = dim.dim_value if dim.HasField("dim_value") else repr(dim.dim_param)
                    problems.append(f"{what} {t.name} axis {i} is {got}, expected the dynamic axis {axis!r} (F13 in docs/field-faults.md)")
                elif isinstance(axis, int) and dim.HasField("dim_value") and dim.dim_value != axis:
                    problems.append(f"{what} {t.name} axis {i} is {dim.dim_value}, expected {axis}")
    return problems


def check_onnx(path: str | Path, spec: ExportSpec, *, standard_only: bool = True) -> dict:
    """Structural checks of an exported model (module docstring lists them).

    Args:
        path: the ``.onnx`` file.
        spec: the interface it must have.
        standard_only: require the standard ONNX domain only (True for ``model.onnx``; an ORT-optimised graph
            legitimately holds ``com.microsoft`` ops, field fault F17 in docs/field-faults.md).

    Returns:
        ``{"opset", "nodes", "op_types" (op -> count), "domains", "initializer_bytes", "checks"}``.

    Raises:
        EngineBuildError: the first failing check, or every interface problem, in one line.
    """
    path = Path(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # onnx raises ValidationError, InferenceError, ...
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise EngineBuildError(f"{path.name}: onnx.checker full check failed: {first}") from None
    model = onnx.load(str(path), load_external_data=False)  # shapes and graph only (the data may be > 2 GiB)
    problems = []
    opset = _default_opset(model)
    if opset < MIN_OPSET:
        problems.append(f"default-domain opset {opset} < {MIN_OPSET}")
    nodes = list(walk_nodes(model.graph))
    ops = Counter(n.op_type if n.domain in _STANDARD_DOMAINS else f"{n.domain}::{n.op_type}" for n in nodes)
    domains = sorted({n.domain or "ai.onnx" for n in nodes})
    forbidden = sorted({n.op_type for n in nodes if n.op_type in _FORBIDDEN_OPS and n.domain in _STANDARD_DOMAINS})
    if forbidden:
        problems.append(f"graph holds {'/'.join(forbidden)} nodes (data-dependent control flow; F19 in docs/field-faults.md)")
    if standard_only:
        other = sorted({n.domain for n in nodes if n.domain not in _STANDARD_DOMAINS}
                       | {o.domain for o in model.opset_import if o.domain not in _STANDARD_DOMAINS})
        if other:
            problems.append(f"non-standard domains {other} in a model that must hold standard ONNX ops only")
        if len(model.functions):
            problems.append(f"{len(model.functions)} model-local functions (expected none)")
    problems += _interface_problems(model, spec)
    if problems:
        raise EngineBuildError(f"{path.name}: " + "; ".join(problems))
    init_bytes = sum(_tensor_bytes(t) for t in model.graph.initializer)
    return {"opset": opset, "nodes": len(nodes), "op_types": dict(sorted(ops.items())), "domains": domains,
            "initializer_bytes": int(init_bytes),
            "checks": ["onnx.checker full_check", f"opset >= {MIN_OPSET}", "no If/Loop",
                       "standard domain only" if standard_only else "domains recorded",
                       "interface names/dtypes/dynamic axes"]}


def read_metadata(path: str | Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file as a dict (weights are not loaded).

    Raises:
        InputError: the file is missing or not an ONNX model.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise InputError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    return {p.key: p.value for p in model.metadata_props}
