"""Text in, labels out: run a measured artifact on sentences (``prumux-compile predict``).

The artifact is opened with :func:`prumux_compile.sources.open_source` and run by the runner of the backend that
built it. Texts are tokenized with the checkpoint's own tokenizer exactly as the build measured accuracy
(:func:`prumux_compile.bench.data.load_eval_data`: ``padding="max_length"``, ``max_length`` = the candidate's
``seq_len``, longest-first truncation of pairs), so on the build's evaluation file the labels give the build's
accuracy. Rows go to the engine in batches of a multiple of N, in input order: rows ``g·N … g·N+N−1`` share one
encoder pass, as in the build (the last group is padded with copies of its last row inside the graph).

Outputs per row: the label name (``id2label`` of the arg-max logit) and the softmax scores (float32, computed in
float64); a one-output (regression) head gives its value instead. Inputs longer than L tokens are truncated
and counted (:attr:`Predictions.truncated`), or refused with ``truncate=False``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prumux_compile.errors import InputError

__all__ = ["Predictions", "softmax", "tokenize", "predict", "format_value"]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``logits`` [n, C], computed in float64 (max subtracted), returned as float32 [n, C]."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


def format_value(value: float) -> str:
    """The text label of a regression output: ``format(value, ".6g")``."""
    return format(float(value), ".6g")


def tokenize(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int, *,
             truncate: bool = True) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Tokenize as the build's evaluation does, and say which inputs did not fit.

    Args:
        tokenizer: a ``transformers`` tokenizer.
        texts / pairs: first sentences and (sentence pairs) second sentences, the same length.
        max_length: L tokens, special tokens included.
        truncate: False refuses inputs longer than L instead of truncating them.

    Returns:
        (feeds, truncated): ``input_ids`` / ``attention_mask`` / ``token_type_ids`` int64 [n, L] (padded to L,
        longest-first truncation) and a bool [n] array, True where the untruncated input has more than L tokens.

    Raises:
        InputError: ``truncate`` is False and some input is longer than L (names the count and the first one).
    """
    if pairs is not None and len(pairs) != len(texts):
        raise InputError(f"{len(texts)} first sentences but {len(pairs)} second sentences")
    full = tokenizer(texts, pairs, truncation=False, padding=False, verbose=False)["input_ids"]
    truncated = np.array([len(ids) > max_length for ids in full], dtype=bool)
    if truncated.any() and not truncate:
        first = int(np.argmax(truncated))
        raise InputError(f"{int(truncated.sum())} of {len(texts)} inputs are longer than the {max_length} tokens this "
                         f"model was compiled and measured for (the first: input {first + 1}, {len(full[first])} "
                         "tokens); shorten them, or drop --no-truncate to truncate them")
    enc = tokenizer(texts, pairs, padding="max_length", max_length=int(max_length), truncation=True,
                    return_tensors="np", return_token_type_ids=True, return_attention_mask=True)
    ids = np.ascontiguousarray(enc["input_ids"], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ascontiguousarray(enc["attention_mask"], dtype=np.int64),
             "token_type_ids": np.ascontiguousarray(enc.get("token_type_ids", np.zeros_like(ids)), dtype=np.int64)}
    if ids.shape != (len(texts), max_length):  # pragma: no cover - guards tokenizers that ignore max_length
        raise InputError(f"the tokenizer returned input_ids of shape {ids.shape}, expected {(len(texts), max_length)}")
    return feeds, truncated


@dataclass
class Predictions:
    """What :func:`predict` returns (n input rows, C outputs).

    Attributes:
        task: ``"classification"`` or ``"regression"`` (one output).
        names: the label name of every output index (``id2label``).
        logits: float32 [n, C]: the engine's outputs.
        scores: float32 [n, C]: softmax of ``logits`` (classification), ``logits`` itself (regression).
        label_ids: int64 [n]: arg-max of ``logits`` (regression: 0).
        labels: the label name of every row; regression: :func:`format_value` of its value.
        truncated: bool [n]: inputs longer than ``seq_len`` tokens, truncated to it.
        seq_len: L, tokens per row.
        batch_size: rows per engine call (a multiple of N).
    """

    task: str
    names: list[str]
    logits: np.ndarray
    scores: np.ndarray
    label_ids: np.ndarray
    labels: list[str]
    truncated: np.ndarray
    seq_len: int
    batch_size: int

    def rows(self, texts: list[str], pairs: list[str] | None = None) -> list[dict]:
        """One JSON-ready dict per row: ``text`` (and ``text_pair``), then ``label``, ``label_id``, ``score`` (the
        label's probability) and ``scores`` (name -> probability) — a regression head: ``value`` and ``label`` —
        and ``truncated``."""
        out = []
        for i, text in enumerate(texts):
            row: dict = {"text": text}
            if pairs is not None:
                row["text_pair"] = pairs[i]
            if self.task == "regression":
                row.update(value=float(self.scores[i, 0]), label=self.labels[i])
            else:
                k = int(self.label_ids[i])
                row.update(label=self.labels[i], label_id=k, score=float(self.scores[i, k]),
                           scores={name: float(s) for name, s in zip(self.names, self.scores[i])})
            row["truncated"] = bool(self.truncated[i])
            out.append(row)
        return out


def predict(measured, texts: list[str], pairs: list[str] | None = None, *, tokenizer: str | Path | None = None,
            batch_size: int | None = None, truncate: bool = True) -> Predictions:
    """Classify ``texts`` (or sentence pairs) with a measured artifact.

    Args:
        measured: a :class:`~prumux_compile.sources.Measured` (from :func:`~prumux_compile.sources.open_source`).
        texts / pairs: the inputs (``pairs`` None for single sentences).
        tokenizer: a tokenizer folder instead of the checkpoint's.
        batch_size: rows per engine call, a multiple of N (default: the candidate's benchmark batch).
        truncate: False refuses inputs longer than the tokenization length instead of truncating them.

    Returns:
        :class:`Predictions`.

    Raises:
        InputError: no texts, a batch size that is not a positive multiple of N, too-long inputs without
            ``truncate``. CheckpointError: no tokenizer. EngineBuildError: the artifact's backend is unavailable.
    """
    from prumux_compile.bench.data import load_tokenizer

    if not texts:
        raise InputError("no text to classify")
    n = measured.num_instances
    batch = measured.batch_size if batch_size is None else int(batch_size)
    if batch < 1 or batch % n:
        raise InputError(f"--batch-size {batch}: must be a positive multiple of N={n} (rows g·N…g·N+N−1 share one "
                         "encoder pass)")
    tok = load_tokenizer(measured.tokenizer_dir(tokenizer))
    feeds, truncated = tokenize(tok, list(texts), None if pairs is None else list(pairs), measured.seq_len,
                                truncate=truncate)
    chunks = []
    with measured.load() as runner:
        for start in range(0, len(texts), batch):
            chunks.append(runner.run({k: v[start:start + batch] for k, v in feeds.items()})["logits"])
    logits = np.concatenate(chunks, axis=0).astype(np.float32, copy=False)
    names = measured.labels
    if measured.task == "regression":
        scores = logits.copy()
        label_ids = np.zeros(len(texts), dtype=np.int64)
        labels = [format_value(v) for v in logits[:, 0]]
    else:
        scores = softmax(logits)
        label_ids = np.argmax(logits, axis=1).astype(np.int64)
        labels = [names[int(k)] for k in label_ids]
    return Predictions(task=measured.task, names=names, logits=logits, scores=scores, label_ids=label_ids,
                       labels=labels, truncated=truncated, seq_len=measured.seq_len, batch_size=batch)
