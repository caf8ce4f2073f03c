"""Triton Python-backend model: the postprocess step of the text ensemble (``<engine>_postprocess``).

This file is copied verbatim to ``<repo>/<engine>_postprocess/1/model.py`` by
:func:`prumux_compile.triton.ensemble.write_text_ensemble`; it is not imported by the package. Inside Triton it
needs only ``numpy`` and the backend's ``triton_python_backend_utils``.

Request: ``LOGITS`` float32 ``[batch, C]`` (the engine's ``logits``).
Response: ``LABEL`` BYTES ``[batch, 1]`` and ``SCORES`` float32 ``[batch, C]``.

* classification (parameter ``prumux.task`` = ``classification``): ``SCORES`` = softmax of the logits (computed in
  float64 with the row maximum subtracted, returned as float32), ``LABEL`` = the name (parameter ``prumux.labels``,
  a JSON list: ``id2label`` in index order) of the arg-max logit — what ``prumux-compile predict`` prints;
* regression (a one-output head): ``SCORES`` = the logits unchanged, ``LABEL`` = the value as text
  (``format(value, ".6g")``).
"""
from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils


def _param(cfg: dict, key: str, default: str) -> str:
    return cfg.get("parameters", {}).get(key, {}).get("string_value", default)


class TritonPythonModel:
    """Triton Python-backend entry point (``initialize`` / ``execute``)."""

    def initialize(self, args):
        """Read the label names and the task from the config parameters."""
        cfg = json.loads(args["model_config"])
        self.labels = [str(x) for x in json.loads(_param(cfg, "prumux.labels", "[]"))]
        self.task = _param(cfg, "prumux.task", "classification")
        if self.task not in ("classification", "regression") or not self.labels:
            raise ValueError("parameters prumux.task (classification | regression) and prumux.labels are required")

    def _answer(self, request):
        tensor = pb_utils.get_input_tensor_by_name(request, "LOGITS")
        if tensor is None:
            raise ValueError("request has no input 'LOGITS'")
        logits = tensor.as_numpy()
        if logits.ndim != 2 or logits.shape[1] != len(self.labels):
            raise ValueError(f"LOGITS must have shape [batch, {len(self.labels)}], got {list(logits.shape)}")
        if self.task == "regression":
            scores = np.ascontiguousarray(logits, dtype=np.float32)
            names = [format(float(v), ".6g") for v in logits[:, 0]]
        else:
            z = logits.astype(np.float64)
            z = np.exp(z - z.max(axis=1, keepdims=True))
            scores = (z / z.sum(axis=1, keepdims=True)).astype(np.float32)
            names = [self.labels[int(k)] for k in np.argmax(logits, axis=1)]
        label = np.array([[n.encode("utf-8")] for n in names], dtype=np.object_)
        return [pb_utils.Tensor("LABEL", label), pb_utils.Tensor("SCORES", scores)]

    def execute(self, requests):
        """Answer every request in order; a bad request gets an error response of its own."""
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self._answer(request)))
            except ValueError as exc:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))))
        return responses
