"""The equality matrix: compiled PyTorch model == independent reference, for every family and variant and the
fault classes F1–F7, F18, F19 (docs/field-faults.md). fp32, max |Δlogit| <= 1e-5."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from prumux_compile import reference
from prumux_compile.checkpoint import load, read_raw
from prumux_compile.kernels import build_module
from prumux_compile.passes import compile_ir
from tests.conftest import make_inputs

SEQ = 16
V = 1024  # index demux prefixes use ids up to 680
BASE = dict(vocab=V, max_pos=64, num_layers=3, hidden=32, heads=4, ffn=48)

# (id, SynthSpec fields). Heads/FFN ids are ORIGINAL ids kept per layer; [] removes the sublayer. F-numbers in ids
# name the field faults of docs/field-faults.md.
CASES = [
    ("bert", dict(family="bert")),
    ("cofi-compressed-F1", dict(family="cofi_compressed", heads_kept=[[0, 2], [], [1, 2, 3]],  # docs/field-faults.md
                                ffn_kept=[list(range(0, 48, 2)), list(range(10)), list(range(48))])),
    ("cofi-compressed-F2-whole-layer", dict(family="cofi_compressed", heads_kept=[[0], [], [3]],  # docs/field-faults.md
                                            ffn_kept=[list(range(5)), [], list(range(7))])),
    ("cofi-masked-binary-hidden", dict(family="cofi_masked", heads_kept=[[1, 3], [0, 1, 2, 3], []],
                                       ffn_kept=[list(range(20)), [], list(range(30))],
                                       hidden_kept=list(range(0, 32, 2)) + [1, 3])),
    ("cofi-masked-soft", dict(family="cofi_masked", soft_masks=True, heads_kept=[[0, 1], [2], [1, 2, 3]],
                              ffn_kept=[list(range(40)), list(range(3)), list(range(48))],
                              hidden_kept=list(range(28)))),
    ("cofi-masked-F3",  # docs/field-faults.md
     dict(family="cofi_masked", heads_kept=[[0, 1], [], [3]], layer_z_only=[("head", 1)])),
    ("prumux-compressed-n2", dict(family="prumux_compressed", num_instances=2, heads_kept=[[0, 3], [1], []],
                                  ffn_kept=[list(range(30)), [], list(range(12))])),
    ("prumux-compressed-n3-F4-hidden", dict(family="prumux_compressed", num_instances=3,  # docs/field-faults.md
                                            hidden_kept=list(range(4, 32)), heads_kept=[[0, 1, 2, 3], [2], [0, 1]])),
    ("prumux-masked-soft-n2", dict(family="prumux_masked", num_instances=2, soft_masks=True,
                                   heads_kept=[[0, 2], [1, 2, 3], [3]], ffn_kept=[list(range(24)), list(range(48)), [1, 5]],
                                   hidden_kept=list(range(1, 32)))),
    ("prumux-masked-binary-F1-F2",  # docs/field-faults.md
     dict(family="prumux_masked", num_instances=2, heads_kept=[[], [0], []],
                                        ffn_kept=[list(range(9)), list(range(48)), []],
                                        hidden_kept=[i for i in range(32) if i % 5])),
    ("prumux-masked-F3-ffn",  # docs/field-faults.md
     dict(family="prumux_masked", num_instances=2, ffn_kept=[[], list(range(48)), [0]],
                                  layer_z_only=[("mlp", 0)])),
    ("muxplm-index-pos-n5", dict(family="muxplm", num_instances=5)),
    ("muxplm-index-n2", dict(family="muxplm", num_instances=2, demuxing_variant="index")),
    ("prumux-binary-hadamard", dict(family="prumux_compressed", num_instances=4, muxing_variant="binary_hadamard",
                                    heads_kept=[[0], [1, 2], [0, 3]])),
    ("prumux-random-ortho", dict(family="prumux_compressed", num_instances=2, muxing_variant="random_ortho",
                                 hidden_kept=list(range(24)), heads_kept=[[0, 1], [2], [3]])),
    ("prumux-masked-mlp-demux-hidden", dict(family="prumux_masked", num_instances=3, demuxing_variant="mlp",
                                            hidden_kept=list(range(0, 32, 3)) + [31], heads_kept=[[0, 1], [2, 3], [1]])),
    ("prumux-compressed-index-hidden", dict(family="prumux_compressed", num_instances=2, demuxing_variant="index",
                                            hidden_kept=list(range(2, 30)), ffn_kept=[[], list(range(16)), list(range(40))])),
    ("prumux-legacy-demux", dict(family="prumux_compressed", num_instances=2, legacy_demuxing=True)),
    ("prumux-demux-default-layers", dict(family="prumux_compressed", num_instances=2, num_hidden_demux_layers=None)),
    ("safetensors-gamma-beta-alias", dict(family="prumux_masked", num_instances=2, safetensors=True,
                                          legacy_ln_names=True, demux_alias="retrieval_head.demux_module",
                                          heads_kept=[[1], [0, 2], [3]])),
    ("F5-4-layer-512-hidden",  # docs/field-faults.md
     dict(family="prumux_compressed", num_instances=2, num_layers=4, hidden=512, heads=8,
                                   ffn=1024, heads_kept=[[0, 1, 2, 3, 4, 5, 6, 7], [1, 6], [], [2, 3, 4]],
                                   ffn_kept=[list(range(1000)), list(range(0, 1024, 3)), list(range(50)), []],
                                   hidden_kept=list(range(500)))),
    ("F7-config-heads-stale",  # docs/field-faults.md
     dict(family="cofi_compressed", heads_kept=[[0, 1, 2], [0, 1, 2], [0, 1, 2]])),
]


def _params(fields: dict) -> dict:
    return {**BASE, **fields}


def _batches(n: int) -> list[int]:
    return sorted({b for b in (1, n - 1, n, 2 * n + 1) if b >= 1})


@pytest.mark.parametrize("case_id,fields", CASES, ids=[c[0] for c in CASES])
def test_compiled_equals_reference(case_id, fields, synth_ckpt):
    path = synth_ckpt(case_id, **_params(fields))
    raw = read_raw(path)
    ir = load(path, seq_len=SEQ)
    n = ir.num_instances
    models = {stage: build_module(compile_ir(ir, stage)[0]) for stage in ("pruning", "all")}
    for b in _batches(n):
        for length in (SEQ, 9):
            ids, mask, tt = make_inputs(b, length, V, seed=b * 31 + length)
            before = (ids.copy(), mask.copy(), tt.copy())
            ref = reference.forward(raw, ids, mask, tt, seq_len=SEQ, dtype=torch.float64)
            assert ref.shape == (b, ir.num_labels)
            for stage, model in models.items():
                with torch.no_grad():
                    out = model(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(tt))
                assert out.shape == (b, ir.num_labels)
                diff = (out.double() - ref.double()).abs().max().item()
                assert diff <= 1e-5, f"{case_id} stage={stage} B={b} S={length}: max |Δlogit| = {diff:.2e}"
            for a, a0 in zip((ids, mask, tt), before):  # F18 in docs/field-faults.md: the caller's arrays are unchanged
                np.testing.assert_array_equal(a, a0)


def test_structure_from_weights_not_config(synth_ckpt):
    """F4/F7 in docs/field-faults.md: widths come from the weights; dropped sublayers and layers show in the compiled IR (F1, F2)."""
    path = synth_ckpt("f", **_params(dict(family="cofi_compressed", heads_kept=[[0], [], [3]],
                                          ffn_kept=[list(range(5)), [], list(range(7))])))
    ir, reports = compile_ir(load(path), "all")
    assert [l.index for l in ir.layers] == [0, 2]  # layer 1 had neither heads nor FFN dims
    assert [l.attention.heads for l in ir.layers] == [1, 1]
    assert [l.ffn.dims for l in ir.layers] == [5, 7]
    drop = next(r for r in reports if r.name == "drop-empty-sublayers")
    assert drop.details["layers_dropped"] == [1]


def test_no_data_dependent_branches_F19(synth_ckpt):
    """F19 in docs/field-faults.md: tracing with a removed sublayer then a present one gives a graph with no control flow."""
    path = synth_ckpt("t", **_params(dict(family="prumux_compressed", num_instances=2,
                                          heads_kept=[[], [1], [0, 2]], ffn_kept=[[0, 1], [], list(range(9))])))
    model = build_module(compile_ir(load(path, seq_len=SEQ), "all")[0])
    ids, mask, tt = (torch.from_numpy(a) for a in make_inputs(4, SEQ, V))
    traced = torch.jit.trace(model, (ids, mask, tt), check_trace=False)
    kinds = {node.kind() for node in traced.inlined_graph.nodes()}
    assert not kinds & {"prim::If", "prim::Loop"}
    ids2, mask2, tt2 = (torch.from_numpy(a) for a in make_inputs(4, SEQ, V, seed=7))
    torch.testing.assert_close(traced(ids2, mask2, tt2), model(ids2, mask2, tt2), rtol=0, atol=1e-6)


def test_batch_padding_deterministic_F18(synth_ckpt):
    """F18 in docs/field-faults.md: B=7 with N=2 and N=5 gives 7 rows, twice the same; the policy is repeat-last (not random)."""
    for n in (2, 5):
        path = synth_ckpt(f"p{n}", **_params(dict(family="muxplm", num_instances=n)))
        model = build_module(compile_ir(load(path, seq_len=SEQ), "all")[0])
        ids, mask, tt = (torch.from_numpy(a) for a in make_inputs(7, SEQ, V))
        with torch.no_grad():
            a, b = model(ids, mask, tt), model(ids, mask, tt)
            padded = torch.cat([ids, ids[-1:].expand((-7) % n, -1)])  # explicit repeat-last padding
            full = model(padded, None, None)
        assert a.shape == (7, model.num_labels)
        assert torch.equal(a, b)
        torch.testing.assert_close(a, full[:7], rtol=0, atol=1e-6)


@pytest.mark.parametrize("case_id,fields", CASES, ids=[c[0] for c in CASES])
def test_onnx_artifacts_equal_reference(case_id, fields, synth_ckpt, tmp_path, one_torch_thread):
    """The same matrix through export: model.onnx (standard domain, no If, symbolic axes) and model.ort.onnx
    on ONNX Runtime CPU, validated against the reference at B in {1, N-1, N, 2N+1} and several lengths, 1e-4
    (F6 in docs/field-faults.md per-layer fused heads, F9 finite padded rows, F11, F13, F15, F17, F18, F19)."""
    from prumux_compile.export_job import export_into

    path = synth_ckpt(case_id, **_params(fields))
    dest = tmp_path / "export"
    dest.mkdir()
    result = export_into(path, dest, seq_len=SEQ, threads=1, prefer="plain")  # raises ValidationError (exit 3)
    assert set(result.validation) == {"model.onnx", "model.ort.onnx", "model.optimized.onnx"}
    n = result.spec.num_instances
    for name, res in result.validation.items():
        assert res.passed, name
        batches = {c.batch for c in res.cases}
        assert batches == set(_batches(n)), name
        assert max(c.max_abs_diff for c in res.cases) <= 1e-4
    fusion = result.artifact.report["fusion"]
    assert fusion["error"] is None
    assert fusion["fused_attention"] == fusion["expected_attention"]  # F6 in docs/field-faults.md: each layer's own head count
