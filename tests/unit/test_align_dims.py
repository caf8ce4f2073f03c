"""``align-dims``: zero heads / FFN dims are exact (docs/checkpoint-formats.md E9) and widths land on the requested multiples."""
from __future__ import annotations

import pytest
import torch

from prumux_compile import reference
from prumux_compile.checkpoint import load, read_raw
from prumux_compile.errors import InputError, IRInvariantError
from prumux_compile.ir import check_invariants
from prumux_compile.kernels import build_module
from prumux_compile.passes import compile_ir
from prumux_compile.passes.align_dims import AlignDims, aligned_heads, aligned_width, padded_ffn_dims, padded_heads
from tests.conftest import make_inputs

SEQ, V = 16, 1024
# hidden 32 / 4 heads -> dh = 8; hidden 24 / 4 heads -> dh = 6 (h*6 is a multiple of 8 only for h = 4k)
CKPTS = {
    "mux-index-pos": dict(family="prumux_compressed", num_instances=2, hidden=32, heads=4, ffn=48,
                          heads_kept=[[0, 2, 3], [], [1]], ffn_kept=[list(range(13)), list(range(5)), []]),
    "mux-index-dh6": dict(family="prumux_compressed", num_instances=3, demuxing_variant="index", hidden=24,
                          heads=4, ffn=40, heads_kept=[[0], [1, 2], [3]], ffn_kept=[list(range(7)), [], [3, 9]]),
    "cofi-masked": dict(family="cofi_masked", hidden=32, heads=4, ffn=48, heads_kept=[[1], [0, 1, 2], []],
                        ffn_kept=[[], list(range(11)), list(range(29))], hidden_kept=list(range(30))),
    "bert-dh6": dict(family="bert", hidden=24, heads=4, ffn=36),
}


def _logits(ir, inputs):
    with torch.no_grad():
        return build_module(ir)(*(torch.from_numpy(a) for a in inputs)).double()


@pytest.mark.parametrize("name", list(CKPTS))
@pytest.mark.parametrize("multiple,head_multiple", [(8, None), (16, None), (8, 4)])
def test_outputs_unchanged(name, multiple, head_multiple, synth_ckpt):
    path = synth_ckpt(name, vocab=V, max_pos=64, num_layers=3, **CKPTS[name])
    ir, _ = compile_ir(load(path, seq_len=SEQ))
    n = ir.num_instances
    inputs = make_inputs(2 * n + 1, 12, V, seed=5)
    before = _logits(ir, inputs)
    new, report = AlignDims(multiple, head_multiple).run(ir)
    check_invariants(new, where="after align-dims")
    after = _logits(new, inputs)
    assert (after - before).abs().max().item() <= 1e-5
    ref = reference.forward(read_raw(path), *inputs, seq_len=SEQ, dtype=torch.float64)
    assert (after - ref).abs().max().item() <= 1e-4
    assert new.hidden == ir.hidden  # d' never padded
    for layer in new.layers:
        if layer.attention is not None:
            a = layer.attention
            assert (a.heads * a.head_size) % multiple == 0
            if head_multiple:
                assert a.heads % head_multiple == 0
            assert a.head_ids == sorted(set(a.head_ids))
        if layer.ffn is not None:
            assert layer.ffn.dims % multiple == 0
    assert report.changed == (report.details.get("padded_heads", 0) + report.details.get("padded_ffn_dims", 0) > 0)


def test_padding_counts_and_marks(synth_ckpt):
    # dh = 6, multiple 8: heads 1 -> 4, 2 -> 4, 1 -> 4; FFN 7 -> 8, 2 -> 8 (layer 1 has no FFN)
    path = synth_ckpt("c", vocab=V, max_pos=64, num_layers=3, **CKPTS["mux-index-dh6"])
    ir, _ = compile_ir(load(path, seq_len=SEQ))
    new, report = AlignDims(8).run(ir)
    assert [l.attention.heads for l in new.layers] == [4, 4, 4]
    assert [None if l.ffn is None else l.ffn.dims for l in new.layers] == [8, None, 8]
    assert padded_heads(new) == {0: [4, 5, 6], 1: [4, 5], 2: [4, 5, 6]}
    assert padded_ffn_dims(new) == {0: 1, 2: 6}
    assert report.details["padded_heads"] == 8 and report.details["padded_ffn_dims"] == 7
    a = new.layers[0].attention
    assert torch.count_nonzero(a.wq[6:]) == 0 and torch.count_nonzero(a.wo[:, 6:]) == 0
    f = new.layers[2].ffn
    assert torch.count_nonzero(f.b1[2:]) == 0 and torch.count_nonzero(f.w2[:, 2:]) == 0
    # idempotent: already aligned -> nothing to do; the input IR is untouched (pure pass)
    again, rep2 = AlignDims(8).run(new)
    assert again is new and not rep2.changed
    assert [l.attention.heads for l in ir.layers] == [1, 2, 1]


@pytest.mark.parametrize("heads,dh,multiple,head_multiple,expected", [
    (7, 64, 8, None, 7), (7, 64, 8, 2, 8), (1, 6, 8, None, 4), (5, 6, 8, None, 8), (3, 8, 16, None, 4),
    (3, 12, 8, 3, 6), (12, 64, 128, None, 12), (1, 64, 128, None, 2),
])
def test_aligned_heads(heads, dh, multiple, head_multiple, expected):
    assert aligned_heads(heads, dh, multiple, head_multiple) == expected


@pytest.mark.parametrize("width,multiple,expected", [(1531, 8, 1536), (1536, 8, 1536), (1, 8, 8), (700, 64, 704)])
def test_aligned_width(width, multiple, expected):
    assert aligned_width(width, multiple) == expected


def test_refuses_masked_ir(synth_ckpt):
    path = synth_ckpt("m", vocab=V, max_pos=64, num_layers=3, **CKPTS["cofi-masked"])
    with pytest.raises(IRInvariantError, match="pruning passes"):
        AlignDims(8).run(load(path, seq_len=SEQ))


@pytest.mark.parametrize("kwargs", [dict(multiple=0), dict(multiple=8, head_multiple=0)])
def test_bad_options(kwargs):
    with pytest.raises(InputError):
        AlignDims(**kwargs)
