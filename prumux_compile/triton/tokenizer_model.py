"""Triton Python-backend model: the tokenizer step of the text ensemble (``<engine>_tokenizer``).

This file is copied verbatim to ``<repo>/<engine>_tokenizer/1/model.py`` by
:func:`prumux_compile.triton.ensemble.write_text_ensemble`; it is not imported by the package. Inside Triton it
needs ``numpy``, ``transformers`` and the backend's ``triton_python_backend_utils``. It loads the checkpoint's own
tokenizer files, copied into ``1/tokenizer/`` beside it, with ``AutoTokenizer.from_pretrained(...,
local_files_only=True)``.

Request: ``TEXT`` BYTES ``[batch, k]``, UTF-8; k = 1 (one sentence per row) or 2 (a sentence pair per row).
Response: ``input_ids``, ``attention_mask``, ``token_type_ids`` int64 ``[batch, L]`` and ``TRUNCATED`` bool
``[batch, 1]``, where L = parameter ``prumux.max_length`` (the engine's compiled length). Tokenization is the
build's (``padding="max_length"``, ``max_length=L``, longest-first truncation of pairs), so the engine sees
exactly what ``prumux-compile predict`` feeds it. ``TRUNCATED`` says which rows had more than L tokens before
truncation; with parameter ``prumux.truncate`` = ``false`` such a request is answered with an error instead.

Each request is tokenized on its own, so its rows stay together and in order: the engine's batching rules
(``prumux.isolate_requests``) then decide which rows share a multiplexed encoder pass.
"""
from __future__ import annotations

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer


def _param(cfg: dict, key: str, default: str) -> str:
    return cfg.get("parameters", {}).get(key, {}).get("string_value", default)


def _text(value) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"TEXT must be UTF-8: {exc}") from None
    return str(value)


class TritonPythonModel:
    """Triton Python-backend entry point (``initialize`` / ``execute`` / ``finalize``)."""

    def initialize(self, args):
        """Load the tokenizer from ``1/tokenizer``; read ``prumux.max_length`` and ``prumux.truncate``."""
        cfg = json.loads(args["model_config"])
        here = os.path.dirname(os.path.abspath(__file__))
        self.tokenizer = AutoTokenizer.from_pretrained(os.path.join(here, "tokenizer"), local_files_only=True)
        self.max_length = int(_param(cfg, "prumux.max_length", "0"))
        if self.max_length < 2:
            raise ValueError("parameter prumux.max_length must be an integer >= 2")
        self.truncate = _param(cfg, "prumux.truncate", "true").lower() == "true"
        self.dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in cfg["output"]}

    def _tokenize(self, request):
        tensor = pb_utils.get_input_tensor_by_name(request, "TEXT")
        if tensor is None:
            raise ValueError("request has no input 'TEXT'")
        array = tensor.as_numpy()
        if array.ndim != 2 or array.shape[1] not in (1, 2) or array.shape[0] < 1:
            raise ValueError(f"TEXT must have shape [batch, 1] (sentences) or [batch, 2] (sentence pairs), got "
                             f"{list(array.shape)}")
        texts = [_text(v) for v in array[:, 0]]
        pairs = [_text(v) for v in array[:, 1]] if array.shape[1] == 2 else None
        full = self.tokenizer(texts, pairs, truncation=False, padding=False, verbose=False)["input_ids"]
        truncated = np.array([[len(ids) > self.max_length] for ids in full], dtype=bool)
        if truncated.any() and not self.truncate:
            raise ValueError(f"{int(truncated.sum())} of {len(texts)} texts are longer than the {self.max_length} "
                             "tokens this model was compiled for (prumux.truncate is false)")
        enc = self.tokenizer(texts, pairs, padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="np", return_token_type_ids=True, return_attention_mask=True)
        ids = np.asarray(enc["input_ids"])
        arrays = {"input_ids": ids, "attention_mask": np.asarray(enc["attention_mask"]),
                  "token_type_ids": np.asarray(enc.get("token_type_ids", np.zeros_like(ids))),
                  "TRUNCATED": truncated}
        return [pb_utils.Tensor(name, np.ascontiguousarray(arrays[name], dtype=dtype))
                for name, dtype in self.dtypes.items()]

    def execute(self, requests):
        """Answer every request in order; a bad request gets an error response of its own."""
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self._tokenize(request)))
            except ValueError as exc:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))))
        return responses

    def finalize(self):
        """Release the tokenizer."""
        self.tokenizer = None
