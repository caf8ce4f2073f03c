"""The tensor interface of a compiled model, as Triton sees it.

A compiled PruMUX model has inputs ``input_ids``,
``attention_mask``, ``token_type_ids`` (int64, ``[batch, sequence]``; batch always dynamic, sequence
dynamic or fixed at the compiled length) and output ``logits`` (float32, ``[batch, num_labels]``).
It multiplexes ``N = num_instances`` consecutive rows into one and pads the batch to a multiple of N
inside the graph, so any batch size ≥ 1 is valid.

This module reads that interface from an ONNX file (graph inputs/outputs and the ``prumux.*``
entries of ``metadata_props``) into plain dataclasses that the config writer and the validator share.
Shapes use ``None`` for a dynamic (symbolic or unknown) axis.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from prumux_compile.errors import InputError

#: Input names of the compiled-model interface, in the order the exporter declares them.
INPUT_NAMES: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
#: Output name of the compiled-model interface.
OUTPUT_NAME = "logits"
#: Element type of every input / of the output.
INPUT_DTYPE = "int64"
OUTPUT_DTYPE = "float32"

#: ``metadata_props`` keys written by the exporter.
META_NUM_INSTANCES = "prumux.num_instances"
META_SEQ_LEN = "prumux.seq_len"
META_MAX_BATCH = "prumux.max_batch"

#: numpy dtype name -> Triton ``DataType`` enum name (model_config.proto).
NUMPY_TO_TRITON: dict[str, str] = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16",
    "object": "TYPE_STRING",
}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input/output (or TensorRT binding).

    Attributes:
        name: tensor name.
        dtype: numpy dtype name (``"int64"``, ``"float32"``, ...).
        shape: full shape INCLUDING the batch axis; ``None`` marks a dynamic axis.
    """

    name: str
    dtype: str
    shape: tuple[int | None, ...]

    @property
    def triton_dtype(self) -> str:
        """Triton ``DataType`` name for :attr:`dtype` (``TYPE_INVALID`` when Triton has none)."""
        return NUMPY_TO_TRITON.get(self.dtype, "TYPE_INVALID")

    @property
    def triton_dims(self) -> tuple[int, ...]:
        """Triton ``dims``: the shape WITHOUT the batch axis, ``-1`` where dynamic (field fault F12 in docs/field-faults.md)."""
        return tuple(-1 if d is None else int(d) for d in self.shape[1:])

    @classmethod
    def of(cls, name: str, dtype: str, shape: Sequence[int | None]) -> "TensorSpec":
        """Build a spec, normalising ``-1``/``None`` to ``None`` and the dtype to its numpy name.

        Raises:
            InputError: unknown dtype or a negative size other than -1.
        """
        try:
            dt = np.dtype(dtype).name if dtype != "bfloat16" else "bfloat16"
        except TypeError as exc:
            raise InputError(f"tensor {name!r}: unknown dtype {dtype!r}") from exc
        dims: list[int | None] = []
        for d in shape:
            if d is None or int(d) == -1:
                dims.append(None)
            elif int(d) < 0:
                raise InputError(f"tensor {name!r}: invalid dimension {d} in shape {list(shape)}")
            else:
                dims.append(int(d))
        return cls(name, dt, tuple(dims))


@dataclass(frozen=True)
class ModelInterface:
    """Inputs, outputs and ``prumux.*`` metadata of a compiled model.

    Attributes:
        inputs / outputs: graph tensors in graph order (initializers excluded).
        metadata: every ``metadata_props`` entry (strings).
        num_instances: ``prumux.num_instances`` (N) or None when absent.
        seq_len: ``prumux.seq_len`` (compiled sequence length) or None.
        max_batch: ``prumux.max_batch`` or None.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    metadata: Mapping[str, str] = field(default_factory=dict)
    num_instances: int | None = None
    seq_len: int | None = None
    max_batch: int | None = None

    def tensor(self, name: str) -> TensorSpec | None:
        """The input or output called ``name``, or None."""
        for t in (*self.inputs, *self.outputs):
            if t.name == name:
                return t
        return None


def _positive_meta(meta: Mapping[str, str], key: str, source: str) -> int | None:
    if key not in meta:
        return None
    raw = meta[key].strip()
    if raw == "" or raw.lower() == "none":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InputError(f"{source}: metadata {key}={raw!r} is not an integer") from None
    if value <= 0:
        raise InputError(f"{source}: metadata {key}={value} must be > 0")
    return value


def interface_from_metadata(
    inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], metadata: Mapping[str, str], source: str
) -> ModelInterface:
    """Assemble a :class:`ModelInterface`, parsing the ``prumux.*`` metadata entries.

    Raises:
        InputError: a ``prumux.*`` entry is not a positive integer.
    """
    meta = dict(metadata)
    return ModelInterface(
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        metadata=meta,
        num_instances=_positive_meta(meta, META_NUM_INSTANCES, source),
        seq_len=_positive_meta(meta, META_SEQ_LEN, source),
        max_batch=_positive_meta(meta, META_MAX_BATCH, source),
    )


def _value_info_spec(vi) -> TensorSpec:
    import onnx.helper

    ttype = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise InputError(f"ONNX value {vi.name!r} is not a tensor")
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type)).name
    if not ttype.HasField("shape"):
        raise InputError(f"ONNX value {vi.name!r} has no shape (rank unknown)")
    dims: list[int | None] = []
    for d in ttype.shape.dim:
        dims.append(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None)
    return TensorSpec(vi.name, dtype, tuple(dims))


def read_onnx_interface(onnx_path: str | Path) -> ModelInterface:
    """Read the interface of an ONNX model without loading external weight data.

    Args:
        onnx_path: path to a ``.onnx`` file.

    Returns:
        The :class:`ModelInterface`; graph inputs that are also initializers are skipped.

    Raises:
        InputError: the file is missing, is not a valid ONNX model, a value has no tensor
            shape, or a ``prumux.*`` metadata entry is not a positive integer.
    """
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise InputError(f"ONNX model not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError / ValueError / OSError
        raise InputError(f"cannot read ONNX model {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    inits = {t.name for t in model.graph.initializer}
    inputs = [_value_info_spec(v) for v in model.graph.input if v.name not in inits]
    outputs = [_value_info_spec(v) for v in model.graph.output]
    meta = {p.key: p.value for p in model.metadata_props}
    return interface_from_metadata(inputs, outputs, meta, str(path))


def onnx_external_data_files(onnx_path: str | Path) -> list[str]:
    """Relative paths of the external-data files an ONNX model refers to (empty when self-contained).

    Raises:
        InputError: the model cannot be read, or a location escapes the model's directory.
    """
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    path = Path(onnx_path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise InputError(f"cannot read ONNX model {path}: {type(exc).__name__}") from exc
    locations: list[str] = []
    for tensor in _graph_tensors(model.graph):
        if uses_external_data(tensor):
            loc = ExternalDataInfo(tensor).location
            p = Path(loc)
            if p.is_absolute() or ".." in p.parts:
                raise InputError(f"{path}: external data location {loc!r} is outside the model directory")
            if loc not in locations:
                locations.append(loc)
    return locations


def _graph_tensors(graph):
    """Initializers and tensor attributes of ``graph`` and of every subgraph, depth first."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from _graph_tensors(sub)
