"""Triton Python-backend model serving a compiled PruMUX ONNX file with ONNX Runtime (CPU).

This file is copied verbatim to ``<repo>/<name>/1/model.py`` by
:func:`prumux_compile.triton.write_repository` (``backend="python"``); it is not imported by the
package. Inside Triton it needs only ``numpy``, ``onnxruntime`` and the backend's
``triton_python_backend_utils``; it loads ``model.onnx`` from its own directory with the session settings the
file was measured under (parameters ``prumux.graph_optimization_level``, ``prumux.intra_op_num_threads``,
``prumux.inter_op_num_threads``; sequential execution).

Requests: ``input_ids``, ``attention_mask``, ``token_type_ids`` int64 ``[batch, sequence]``;
response: ``logits`` float32 ``[batch, num_labels]`` (as declared in ``config.pbtxt``).

Ids: ``input_ids`` in ``[0, prumux.vocab_size)`` and, where the family reads them, ``token_type_ids`` in
``[0, prumux.type_vocab_size)`` (ONNX metadata); anything else is answered with an error naming the table size
(field fault F20 in docs/field-faults.md), never with the logits of a wrapped-around index.

Sequence length: at most ``prumux.max_seq_len`` tokens (config parameter, else the ONNX metadata of the same
name: the compiled length of a multiplexed model, else the position table). Triton's ``dims`` cannot bound a
variable axis, so a longer request reaches this model, which answers it with an error naming the limit instead of
passing it to ONNX Runtime (where it would fail with a shape or index error).

Batching: one ``execute`` call receives the requests the dynamic batcher gathered. Requests with the
same non-batch shapes are concatenated along axis 0 and run in one ONNX Runtime call, then split.
The model multiplexes N = ``prumux.num_instances`` CONSECUTIVE rows into one mux group
(docs/checkpoint-formats.md, notation: row r is instance r mod N of group r div N), so a row's logits
depend on the other rows of its group. With parameter ``prumux.isolate_requests`` = ``true`` (the
default) only requests whose batch is a multiple of N are concatenated (each then fills whole groups
of its own) and every other request runs alone; every response then equals running that request's
tensors through the ONNX model by itself. With ``false`` all same-shape requests are concatenated.
"""
from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


_GRAPH_LEVELS = {"disable_all": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                 "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                 "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                 "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


def _param(cfg: dict, key: str, default: str) -> str:
    return cfg.get("parameters", {}).get(key, {}).get("string_value", default)


class TritonPythonModel:
    """Triton Python-backend entry point (``initialize`` / ``execute`` / ``finalize``)."""

    def initialize(self, args):
        """Load ``model.onnx`` beside this file into a CPU ONNX Runtime session."""
        cfg = json.loads(args["model_config"])
        self.num_instances = max(1, int(_param(cfg, "prumux.num_instances", "1")))
        self.isolate = _param(cfg, "prumux.isolate_requests", "true").lower() == "true"
        opts = ort.SessionOptions()
        threads = _param(cfg, "prumux.intra_op_num_threads", "")
        if threads:
            opts.intra_op_num_threads = int(threads)
        # the session settings the model file was measured under (a saved optimised graph: "disable_all")
        inter = _param(cfg, "prumux.inter_op_num_threads", "")
        if inter:
            opts.inter_op_num_threads = int(inter)
        level = _param(cfg, "prumux.graph_optimization_level", "all")
        opts.graph_optimization_level = _GRAPH_LEVELS[level]
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model.onnx")
        self.session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        meta = self.session.get_modelmeta().custom_metadata_map
        limit = _param(cfg, "prumux.max_seq_len", "") or meta.get("prumux.max_seq_len", "")
        self.max_seq_len = int(limit) if limit else None
        # ONNX Gather wraps negative indices (id -1 reads the last row): check ids against the tables here, as the
        # package's own runners do (field fault F20 in docs/field-faults.md), instead of answering with another token's logits
        self.table_sizes = {"input_ids": int(meta["prumux.vocab_size"])} if "prumux.vocab_size" in meta else {}
        ignored = json.loads(meta.get("prumux.ignored_inputs", "[]") or "[]")
        if "token_type_ids" not in ignored and "prumux.type_vocab_size" in meta:
            self.table_sizes["token_type_ids"] = int(meta["prumux.type_vocab_size"])
        self.output_names = [o["name"] for o in cfg["output"]]
        self.output_dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in cfg["output"]}

    def _read(self, request):
        feeds = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"request has no input {name!r}")
            array = tensor.as_numpy()
            if array.dtype != np.int64:
                raise ValueError(f"input {name!r} must be int64, got {array.dtype}")
            feeds[name] = array
        shapes = {a.shape for a in feeds.values()}
        if len(shapes) != 1:
            raise ValueError(f"inputs must share one [batch, sequence] shape, got {sorted(shapes)}")
        shape = shapes.pop()
        if len(shape) != 2:
            raise ValueError(f"inputs must have shape [batch, sequence], got {list(shape)}")
        for name, size in self.table_sizes.items():
            array = feeds.get(name)
            if array is not None and array.size and (int(array.min()) < 0 or int(array.max()) >= size):
                what = "vocabulary" if name == "input_ids" else "token-type table"
                raise ValueError(f"{name}: ids must lie in [0, {size}) (the model's {what} has {size} rows); got "
                                 f"min {int(array.min())}, max {int(array.max())}")
        if self.max_seq_len is not None and shape[1] > self.max_seq_len:
            raise ValueError(
                f"sequence length {shape[1]} exceeds {self.max_seq_len} tokens, the longest this model accepts "
                f"(prumux.max_seq_len: the compiled length of a multiplexed model, else its position embeddings); "
                f"truncate the input to {self.max_seq_len} tokens"
            )
        return feeds

    def _plan(self, feeds_per_request):
        """Groups of request indices to run together (order preserved)."""
        groups: dict[tuple, list[int]] = {}
        plan: list[list[int]] = []
        for i, feeds in enumerate(feeds_per_request):
            if feeds is None:
                continue
            batch = next(iter(feeds.values())).shape[0]
            if self.isolate and batch % self.num_instances:
                plan.append([i])
                continue
            key = tuple(a.shape[1:] for a in feeds.values())
            if key not in groups:
                groups[key] = []
                plan.append(groups[key])
            groups[key].append(i)
        return plan

    def execute(self, requests):
        """Answer every request (in order); a failing request gets an error response of its own."""
        responses = [None] * len(requests)
        feeds_per_request = []
        for i, request in enumerate(requests):
            try:
                feeds_per_request.append(self._read(request))
            except ValueError as exc:
                feeds_per_request.append(None)
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc)))
        for group in self._plan(feeds_per_request):
            feeds = {
                name: np.concatenate([feeds_per_request[i][name] for i in group], axis=0) for name in self.input_names
            }
            try:
                outputs = self.session.run(self.output_names, feeds)
            except Exception as exc:  # ORT raises its own exception types; report per request
                for i in group:
                    responses[i] = pb_utils.InferenceResponse(
                        output_tensors=[], error=pb_utils.TritonError(f"onnxruntime: {exc}")
                    )
                continue
            start = 0
            for i in group:
                rows = feeds_per_request[i][self.input_names[0]].shape[0]
                tensors = [
                    pb_utils.Tensor(name, np.ascontiguousarray(out[start : start + rows], dtype=self.output_dtypes[name]))
                    for name, out in zip(self.output_names, outputs)
                ]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += rows
        return responses

    def finalize(self):
        """Release the ONNX Runtime session."""
        self.session = None
