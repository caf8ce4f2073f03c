"""Deterministic, realistic model inputs for export examples, validation and benchmarks.

Rows look like tokenised BERT input (WordPiece ids of bert-base-uncased): ``[CLS]=101`` first, ``[SEP]=102``
closing each segment, random ordinary tokens in between, right padding with ``[PAD]=0``. Every input comes
from a seeded :func:`numpy.random.default_rng` generator, so the same arguments always give the same arrays.
"""
from __future__ import annotations

import numpy as np

from prumux_compile.errors import InputError

CLS_ID = 101
SEP_ID = 102
PAD_ID = 0
#: First id of ordinary (non-special) tokens drawn when the vocabulary is large (bert-base: "!" = 999).
_FIRST_WORD = 1000


def realistic_inputs(batch: int, seq: int, vocab_size: int, *, seed: int = 0,
                     pad_rows: bool = True, type_vocab_size: int = 2) -> dict[str, np.ndarray]:
    """Inputs ``{"input_ids", "attention_mask", "token_type_ids"}``, each int64 ``[batch, seq]``.

    Row 0 always fills all ``seq`` positions. With ``pad_rows`` every odd row is right-padded (mask 0, id 0)
    to a length drawn in ``[max(2, seq // 2), seq]``. Every third row (r % 3 == 1) is a sentence pair:
    ``[CLS] a [SEP] b [SEP]``, with token type 1 on the second segment when the token-type table has a row 1
    (``type_vocab_size >= 2``; else type 0 throughout, as a tokenizer for such a model writes: field fault F20 in docs/field-faults.md).
    Ordinary tokens are drawn from ``[1000, vocab)`` for a BERT-sized vocabulary, else from ``[103, vocab)``.
    Every id lies inside its table.

    Args:
        batch, seq: shape (both >= 1).
        vocab_size: rows of the word-embedding table; must exceed 103 so that [CLS]/[SEP] and one ordinary
            token exist.
        seed: generator seed.
        pad_rows: pad odd rows as described.
        type_vocab_size: rows of the token-type table (``ExportSpec.type_vocab_size``).

    Raises:
        InputError: ``batch`` or ``seq`` < 1, ``vocab_size`` <= 103, or ``type_vocab_size`` < 1.
    """
    if batch < 1 or seq < 1:
        raise InputError(f"inputs: batch and seq must be >= 1, got {batch} x {seq}")
    if int(type_vocab_size) < 1:
        raise InputError(f"inputs: type_vocab_size must be >= 1, got {type_vocab_size}")
    if vocab_size <= SEP_ID + 1:
        raise InputError(f"inputs: vocabulary of {vocab_size} rows has no room for [CLS]=101 / [SEP]=102")
    rng = np.random.default_rng(seed)
    low = _FIRST_WORD if vocab_size > 2 * _FIRST_WORD else SEP_ID + 1
    ids = rng.integers(low, vocab_size, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    types = np.zeros((batch, seq), dtype=np.int64)
    for r in range(batch):
        real = seq
        if pad_rows and r % 2 == 1 and seq > 2:
            real = int(rng.integers(max(2, seq // 2), seq + 1))
        ids[r, 0] = CLS_ID
        if real >= 2:
            ids[r, real - 1] = SEP_ID
        if r % 3 == 1 and real >= 5:
            cut = real // 2
            ids[r, cut - 1] = SEP_ID
            types[r, cut:real] = 1 if type_vocab_size >= 2 else 0
        ids[r, real:] = PAD_ID
        mask[r, real:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
