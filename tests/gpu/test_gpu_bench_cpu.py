"""``scripts/gpu_bench.py`` on the CPU: the sparsity structures, the in-memory compressed checkpoints (equal to
what ``write_checkpoint`` writes) and the whole ``--dry-run`` (every stage but CUDA, tiny model)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prumux_compile.checkpoint import load
from prumux_compile.demo.synthetic import SynthSpec, cofi_sparsity, write_checkpoint

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", REPO / "scripts" / "gpu_bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_bench"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("total,weights,cap,expected", [
    (7, [2, 1.9, 1.8, 1.7, 1.6, 1.5, 1.4, 1.3, 1.2, 1.1, 1.0, 0.9], 12, [1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]),
    (10, [1, 1], 6, [5, 5]),
    (11, [3, 1], 6, [6, 5]),          # the cap moves the overflow to the other slot
    (0, [1, 2, 3], 4, [0, 0, 0]),
    (12, [1, 2, 3], 4, [4, 4, 4]),
])
def test_allocate(bench, total, weights, cap, expected):
    assert bench.allocate(total, weights, cap) == expected


def test_allocate_rejects_overflow(bench):
    with pytest.raises(ValueError):
        bench.allocate(13, [1, 2, 3], 4)


@pytest.mark.parametrize("target", [0.6, 0.9, 0.95])
def test_bert_base_structures_hit_target_sparsity(bench, target):
    sh = bench.BERT_BASE
    st = bench.structure_for(target, sh, seed=0)
    actual = cofi_sparsity(st, sh.layers, sh.hidden, sh.ffn, sh.head_size)
    assert abs(actual - target) <= 0.005
    heads = [len(h) for h in st.heads_kept]
    dims = [len(f) for f in st.ffn_kept]
    assert all(0 <= h <= 12 for h in heads) and all(0 <= f <= 3072 for f in dims)
    assert heads == sorted(heads, reverse=True) and dims == sorted(dims, reverse=True)  # upper layers lose more
    assert all(h == sorted(set(h)) for h in st.heads_kept) and len(st.hidden_kept) == 768
    if target == 0.95:
        assert 0 in heads  # whole attention sublayers removed (F1 in docs/field-faults.md)


def test_unpruned_structure(bench):
    sh = bench.TINY
    st = bench.structure_for(0.0, sh)
    assert st.heads_kept == [list(range(sh.heads))] * sh.layers and st.ffn_kept == [list(range(sh.ffn))] * sh.layers


@pytest.mark.parametrize("n", [1, 2])
def test_sliced_checkpoint_equals_written_checkpoint(bench, n, tmp_path):
    """The in-memory compressed checkpoint of a structure == write_checkpoint(heads_kept=..., ffn_kept=...)."""
    sh = bench.TINY
    ctx = bench.Ctx(out=tmp_path / "out", cache=tmp_path / "cache", dry=True, device="cpu", shape=sh, budget_s=60)
    st = bench.structure_for(0.6, sh, seed=0)
    raw, ir, _, actual = bench.config_ir(ctx, n, 0.6, {})
    family = "prumux_compressed" if n > 1 else "cofi_compressed"
    write_checkpoint(tmp_path / "direct", SynthSpec(family=family, num_layers=sh.layers, hidden=sh.hidden,
                                                    heads=sh.heads, ffn=sh.ffn, vocab=sh.vocab, max_pos=sh.max_pos,
                                                    num_labels=sh.labels, num_instances=n, seed=0,
                                                    heads_kept=st.heads_kept, ffn_kept=st.ffn_kept))
    direct = load(tmp_path / "direct", seq_len=sh.seq_len)
    assert raw.family == family and direct.family == family
    assert actual == pytest.approx(cofi_sparsity(st, sh.layers, sh.hidden, sh.ffn, sh.head_size))
    for a, b in zip(ir.layers, direct.layers):
        assert (a.attention is None) == (b.attention is None) and (a.ffn is None) == (b.ffn is None)
        if a.attention is not None:
            assert a.attention.head_ids == b.attention.head_ids
            for t in ("wq", "bq", "wk", "wv", "wo", "bo", "ln_weight"):
                assert torch.equal(getattr(a.attention, t), getattr(b.attention, t)), t
        if a.ffn is not None:
            for t in ("w1", "b1", "w2", "b2"):
                assert torch.equal(getattr(a.ffn, t), getattr(b.ffn, t)), t
    assert torch.equal(ir.classifier[0], direct.classifier[0])
    assert torch.equal(ir.embeddings.word, direct.embeddings.word)


def test_dry_run_exercises_every_stage(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_bench.py"), "all", "--dry-run", "--out", str(out),
                           "--cache", str(tmp_path / "cache")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    stages = [line.split("\t") for line in (out / "stages.tsv").read_text().splitlines()]
    assert [s[0] for s in stages] == ["env", "kernels", "validate", "bench", "compile"]
    assert all(s[1] == "ok" for s in stages)
    val = json.loads((out / "validate.json").read_text())
    assert val["ok"] and [c["N"] for c in val["configs"]] == [2]  # one validation configuration
    (c,) = val["configs"]
    assert c["fp32"]["ok"] and c["fp32"]["max_abs_diff"] <= 1e-3 and c["fp32"]["criteria"] == "|Δ| <= 0.001"
    assert c["fp16"]["ok"] and c["fp16"]["argmax_agreement"] >= 0.995 and c["fp16_vs_fp32_engine"]["ok"]
    bench = json.loads((out / "bench.json").read_text())
    assert bench["complete"] and not bench["failed"]
    rows = bench["rows"]
    assert [(r["N"], r["sparsity"]) for r in rows] == [(1, 0.0), (1, 0.6), (2, 0.0), (2, 0.6)]
    assert all(r[k]["seq_per_s"] > 0 for r in rows for k in ("eager_fp32", "engine_fp32", "engine_fp16"))
    summary = (out / "summary.md").read_text()
    for heading in ("## Stages", "## Validation", "## Throughput", "## Triton kernels", "speedup fp16"):
        assert heading in summary
    assert "| 1 | 0.00 / " in summary and "1.00x" in summary  # the baseline row is its own reference


def test_shell_script_syntax():
    proc = subprocess.run(["bash", "-n", str(REPO / "scripts" / "gpu_check.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
