"""Small ONNX models with the compiled-model interface, for the Triton tests.

Not a pytest conftest (``tests/conftest.py`` belongs to someone else): test modules import it by path.

The toy graph: ``logits = mean_s((E[input_ids] + T[token_type_ids]) * attention_mask) @ W + b`` with
``input_ids``, ``attention_mask``, ``token_type_ids`` int64 ``[batch, seq]`` and ``logits`` float32
``[batch, num_labels]``. Weights come from a seeded numpy generator. :func:`toy_reference` computes the
same in numpy, so tests can compare a served result with an independent computation.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VOCAB, HIDDEN, TYPES = 50, 8, 2


def toy_weights(num_labels: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded weights of the toy model (float32)."""
    rng = np.random.default_rng(seed)
    return {
        "emb": rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32),
        "type_emb": rng.standard_normal((TYPES, HIDDEN)).astype(np.float32),
        "w": rng.standard_normal((HIDDEN, num_labels)).astype(np.float32),
        "b": rng.standard_normal((num_labels,)).astype(np.float32),
    }


def make_toy_onnx(
    path: Path,
    *,
    num_labels: int = 3,
    seq_len: int | None = None,
    batch: int | str = "batch",
    metadata: dict[str, str] | None = None,
    input_dtype: int = TensorProto.INT64,
    input_names: tuple[str, str, str] = ("input_ids", "attention_mask", "token_type_ids"),
    output_name: str = "logits",
    seed: int = 0,
) -> Path:
    """Write a toy ONNX model; ``seq_len`` None = dynamic sequence axis, ``batch`` int = fixed batch axis."""
    w = toy_weights(num_labels, seed)
    seq = seq_len if seq_len is not None else "sequence"
    ids, mask, types = input_names
    inputs = [helper.make_tensor_value_info(n, input_dtype, [batch, seq]) for n in input_names]
    out = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, num_labels])
    nodes = []
    if input_dtype != TensorProto.INT64:
        for n in input_names:
            nodes.append(helper.make_node("Cast", [n], [n + "_i64"], to=TensorProto.INT64))
        ids, mask, types = (n + "_i64" for n in input_names)
    nodes += [
        helper.make_node("Gather", ["emb", ids], ["tok"]),
        helper.make_node("Gather", ["type_emb", types], ["typ"]),
        helper.make_node("Add", ["tok", "typ"], ["x"]),
        helper.make_node("Cast", [mask], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis_last"], ["mask3"]),
        helper.make_node("Mul", ["x", "mask3"], ["xm"]),
        helper.make_node("ReduceMean", ["xm", "axis_seq"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w"], ["proj"]),
        helper.make_node("Add", ["proj", "b"], [output_name]),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]
    inits += [numpy_helper.from_array(np.array([2], np.int64), "axis_last"),
              numpy_helper.from_array(np.array([1], np.int64), "axis_seq")]
    graph = helper.make_graph(nodes, "toy", inputs, [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    for k, v in (metadata or {}).items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path


def toy_reference(feeds: dict[str, np.ndarray], num_labels: int = 3, seed: int = 0) -> np.ndarray:
    """Numpy logits of the toy model, float32 ``[batch, num_labels]``."""
    w = toy_weights(num_labels, seed)
    x = w["emb"][feeds["input_ids"]] + w["type_emb"][feeds["token_type_ids"]]
    x = x * feeds["attention_mask"].astype(np.float32)[..., None]
    return (x.mean(axis=1) @ w["w"] + w["b"]).astype(np.float32)


def toy_feeds(batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded random int64 inputs ``[batch, seq]`` (mask zeroes a random tail of each row)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, size=(batch, seq), dtype=np.int64)
    lengths = rng.integers(1, seq + 1, size=batch)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    types = rng.integers(0, TYPES, size=(batch, seq), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
