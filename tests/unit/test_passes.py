"""Each IR pass on its own: the model before and after the pass gives the same logits on the same inputs
(fold-masks: after == the reference, since the kernels refuse soft masks), and the pass did its job."""
from __future__ import annotations

import pytest
import torch

from prumux_compile import reference
from prumux_compile.checkpoint import load, read_raw
from prumux_compile.errors import IRInvariantError
from prumux_compile.kernels import build_module
from prumux_compile.passes import ALL_PASSES, PassManager
from prumux_compile.passes.base import Pass
from tests.conftest import make_inputs

SEQ, V = 16, 1024
BASE = dict(vocab=V, max_pos=64, num_layers=3, hidden=32, heads=4, ffn=48)
CKPTS = {
    "masked-mux": dict(family="prumux_masked", num_instances=2, heads_kept=[[0, 2], [], [1, 3]],
                       ffn_kept=[list(range(20)), [], list(range(40))], hidden_kept=list(range(3, 32))),
    "masked-cofi-soft": dict(family="cofi_masked", soft_masks=True, heads_kept=[[1], [0, 1, 2, 3], []],
                             ffn_kept=[[], list(range(10)), list(range(48))], hidden_kept=list(range(30))),
    "compressed-index": dict(family="prumux_compressed", num_instances=3, demuxing_variant="index",
                             heads_kept=[[0], [1, 2], [3]]),
    "mlp-demux": dict(family="muxplm", num_instances=2, demuxing_variant="mlp"),
    "ortho": dict(family="prumux_compressed", num_instances=2, muxing_variant="random_ortho"),
}
ORDER = ["fold-masks", "prune-hidden", "prune-heads", "prune-ffn", "drop-empty-sublayers",
         "fuse-mux", "fuse-demux", "fold-attention-scale", "trim-last-layer"]


def _run(model, inputs):
    with torch.no_grad():
        return model(*(torch.from_numpy(a) for a in inputs)).double()


@pytest.mark.parametrize("name", list(CKPTS))
def test_each_pass_preserves_outputs(name, synth_ckpt):
    path = synth_ckpt(name, **{**BASE, **CKPTS[name]})
    raw = read_raw(path)
    ir = load(path, seq_len=SEQ)
    n = ir.num_instances
    inputs = make_inputs(2 * n + 1, 12, V, seed=3)
    ref = reference.forward(raw, *inputs, seq_len=SEQ, dtype=torch.float64)
    applied = []
    for pass_name in ORDER:
        new, report = ALL_PASSES[pass_name]().run(ir)
        assert new is not ir or not report.changed
        if report.changed:
            applied.append(pass_name)
            after = _run(build_module(new), inputs)
            if ir.masks is None:
                before = _run(build_module(ir), inputs)
                assert (after - before).abs().max().item() <= 1e-5, pass_name
            assert (after - ref).abs().max().item() <= 1e-5, pass_name
        ir = new
    assert "fold-attention-scale" in applied and "trim-last-layer" in applied
    if CKPTS[name].get("family", "").endswith("masked"):
        assert applied[:5] == ORDER[:5]
    if n > 1:
        assert "fuse-mux" in applied and "fuse-demux" in applied


def test_passes_are_pure(synth_ckpt):
    path = synth_ckpt("p", **{**BASE, **CKPTS["masked-mux"]})
    ir = load(path, seq_len=SEQ)
    snapshot = ir.clone()
    for pass_name in ORDER:
        new, _ = ALL_PASSES[pass_name]().run(ir)
        ir = new
    assert snapshot.masks is not None and snapshot.hidden == 32 and snapshot.history == []
    fresh = load(path, seq_len=SEQ)
    assert torch.equal(snapshot.layers[0].attention.wq, fresh.layers[0].attention.wq)


def test_prune_reports_counts(synth_ckpt):
    path = synth_ckpt("r", **{**BASE, **CKPTS["masked-mux"]})
    _, reports = PassManager([ALL_PASSES[p]() for p in ORDER]).run(load(path, seq_len=SEQ))
    by = {r.name: r for r in reports}
    assert by["prune-hidden"].details["after"] == 29 and by["prune-hidden"].details["removed"] == [0, 1, 2]
    assert by["prune-heads"].details["layers"][0]["removed"] == [1, 3]
    assert by["prune-ffn"].details["layers"][2] == {"before": 48, "kept": 40}
    assert by["drop-empty-sublayers"].details["attention_removed"] == [1]
    assert by["drop-empty-sublayers"].details["ffn_removed"] == [1]
    assert by["drop-empty-sublayers"].details["layers_dropped"] == [1]
    assert by["prune-heads"].params_after < by["prune-heads"].params_before


class _Breaks(Pass):
    name = "breaks-shapes"

    def apply(self, ir):
        ir.layers[0].attention.wq = ir.layers[0].attention.wq[:, :-1]
        return "broke wq", {}


def test_manager_names_the_pass_that_breaks_an_invariant(synth_ckpt):
    path = synth_ckpt("b", **{**BASE, "family": "bert"})
    with pytest.raises(IRInvariantError, match="breaks-shapes"):
        PassManager([_Breaks()]).run(load(path))


def test_kernels_refuse_soft_masks(synth_ckpt):
    path = synth_ckpt("s", **{**BASE, **CKPTS["masked-cofi-soft"]})
    with pytest.raises(IRInvariantError, match="fold-masks"):
        build_module(load(path))


def test_passes_share_untouched_tensors_and_never_write_into_them(synth_ckpt):
    """Cheap passes: each pass works on a structural copy (tensors shared, not deep-copied); every tensor of the
    input survives the whole pipeline unchanged (same object, same version counter, same values)."""
    from prumux_compile.passes.base import ir_tensors

    path = synth_ckpt("c", **{**BASE, **CKPTS["masked-mux"]})
    ir = load(path, seq_len=SEQ)
    before = [(t, t._version, t.clone()) for t in ir_tensors(ir)]
    new, report = ALL_PASSES["fold-attention-scale"]().run(ir)
    assert report.changed
    # untouched tensors are the very same objects, the rewritten ones are new
    assert new.embeddings.word is ir.embeddings.word and new.layers[0].ffn.w1 is ir.layers[0].ffn.w1
    assert new.layers[0].attention.wq is not ir.layers[0].attention.wq
    assert new.layers[0].attention.wk is ir.layers[0].attention.wk
    assert new.layers is not ir.layers and new.layers[0] is not ir.layers[0] and ir.history == []
    final, _ = PassManager([ALL_PASSES[p]() for p in ORDER]).run(ir)
    assert final.history == ORDER
    for t, version, copy in before:
        assert t._version == version and torch.equal(t, copy)


class _WritesInPlace(Pass):
    name = "writes-in-place"

    def apply(self, ir):
        ir.layers[0].attention.bq.mul_(2.0)  # a write into a tensor shared with the input IR
        return "scaled bq in place", {}


def test_in_place_write_is_refused_naming_the_pass(synth_ckpt):
    path = synth_ckpt("w", **{**BASE, "family": "bert"})
    with pytest.raises(IRInvariantError, match="pass 'writes-in-place' wrote into 1 tensor"):
        PassManager([_WritesInPlace()]).run(load(path))
