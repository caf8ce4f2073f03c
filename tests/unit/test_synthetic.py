"""Synthetic checkpoints (prumux_compile.demo.synthetic); the MiniLM demo grid is tested in tests/unit/test_demo.py.

Expected shapes and values come from docs/checkpoint-formats.md (§1.3-1.6, §2.9, §6), written out by hand
here, never copied from the code under test.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from prumux_compile.checkpoint import read_raw
from prumux_compile.errors import CheckpointError, InputError
from prumux_compile.demo.synthetic import SynthSpec, compress_like_upstream, write_checkpoint

# A pruned structure for the default sizes (L=2, d=32, H=4 -> dh=8, F=64): layer 1 loses its attention
# and its FFN (fault F1 in docs/field-faults.md / F2 shapes), 17 of 32 hidden dims stay.
HEADS = [[0, 2], []]
FFN = [list(range(0, 64, 2)), []]
HIDDEN = sorted(list(range(0, 32, 2)) + [1])  # 17 dims
PRUNED = dict(heads_kept=HEADS, ffn_kept=FFN, hidden_kept=HIDDEN)
PRUNED_FAMILIES = ("prumux_compressed", "prumux_masked", "cofi_compressed", "cofi_masked")


def spec_for(family: str, **kw) -> SynthSpec:
    base = dict(PRUNED) if family in PRUNED_FAMILIES else {}
    base.update(kw)
    return SynthSpec(family, **base)


def raw_file(path) -> dict:
    return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------------
# every family / variant reads back


@pytest.mark.parametrize("family", ["prumux_compressed", "prumux_masked", "muxplm", "cofi_compressed",
                                    "cofi_masked", "bert"])
@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_family_round_trip(tmp_path, family, fmt):
    info = write_checkpoint(tmp_path / "c", spec_for(family, safetensors=fmt == "safetensors"))
    raw = read_raw(info.path)
    assert raw.family == family
    assert (info.path / ("model.safetensors" if fmt == "safetensors" else "pytorch_model.bin")).is_file()
    assert (info.path / "zs.pt").is_file() == (family in ("prumux_masked", "cofi_masked"))
    assert raw.num_instances == (2 if family in ("prumux_compressed", "prumux_masked", "muxplm") else 1)
    assert ("bert.pooler.dense.weight" in raw.state_dict) == (family != "muxplm")
    assert raw.state_dict["classifier.weight"].shape == (3, 32)


@pytest.mark.parametrize("mux", ["gaussian_hadamard", "binary_hadamard", "random_ortho"])
@pytest.mark.parametrize("demux", ["index_pos", "index", "mlp"])
@pytest.mark.parametrize("family", ["prumux_compressed", "prumux_masked", "muxplm"])
def test_mux_demux_variants_read_back(tmp_path, family, mux, demux):
    info = write_checkpoint(tmp_path / "c", spec_for(family, muxing_variant=mux, demuxing_variant=demux))
    raw = read_raw(info.path)
    assert (raw.family, raw.muxing_variant, raw.demuxing_variant) == (family, mux, demux)
    sd = raw.state_dict
    dp = 17 if family == "prumux_compressed" else 32
    assert sd["instance_embedding"].shape == ((2, dp) if mux != "random_ortho" else (2, dp, dp))
    if demux == "index_pos":
        assert sd["demux_module.dense_1.weight"].shape == (32, 2 * dp)
        assert sd["demux_module.demux_instance_embedding"].shape == (2, dp)
        assert {f"demux_module.dense_{k}.weight" for k in (2, 3)} <= set(sd)
        assert {f"demux_module.layer_norm_{k}.weight" for k in (1, 2, 3)} <= set(sd)
        assert sd["demultiplexer.pre_decoder.weight"].shape == (32, 32)
    elif demux == "mlp":
        for n in range(2):
            assert sd[f"demux_module.dense_{n}.weight"].shape == (32, dp)
            assert sd[f"demux_module.layer_norm_{n}.weight"].shape == (32,)
        assert sd["demultiplexer.dense_before_out_proj.weight"].shape == (32, 32)
        assert sd["demultiplexer.layernorm.bias"].shape == (32,)
    else:
        assert sd["demultiplexer.dense.weight"].shape == (32, 2 * dp)
        assert sd["demultiplexer.layer_norm.weight"].shape == (32,)


def test_compressed_shapes_follow_spec(tmp_path):
    info = write_checkpoint(tmp_path / "a", spec_for("prumux_compressed"))
    sd = read_raw(info.path).state_dict
    expected = {
        "bert.embeddings.word_embeddings.weight": (64, 17),
        "bert.embeddings.position_embeddings.weight": (64, 17),
        "bert.embeddings.token_type_embeddings.weight": (2, 17),
        "bert.embeddings.LayerNorm.weight": (17,),
        "bert.embeddings.position_ids": (1, 64),
        "bert.encoder.layer.0.attention.self.query.weight": (16, 17),  # 2 heads * dh 8
        "bert.encoder.layer.0.attention.self.value.bias": (16,),
        "bert.encoder.layer.0.attention.output.dense.weight": (17, 16),
        "bert.encoder.layer.0.attention.output.LayerNorm.weight": (17,),
        "bert.encoder.layer.0.intermediate.dense.weight": (32, 17),
        "bert.encoder.layer.0.output.dense.weight": (17, 32),
        "bert.encoder.layer.0.output.LayerNorm.bias": (17,),
        "bert.encoder.layer.1.attention.output.LayerNorm.weight": (32,),  # Q14 in docs/checkpoint-formats.md: attention removed, [d] kept
        "bert.encoder.layer.1.output.LayerNorm.weight": (17,),  # always sliced
        "bert.pooler.dense.weight": (32, 17),
        "layer_transformation.weight": (32, 17),
        "instance_embedding": (2, 17),
        "demux_module.demux_instance_embedding": (2, 17),
        "demux_module.dense_1.weight": (32, 34),
        "retrieval_head.decoder.weight": (64, 32),
        "classifier.weight": (3, 32),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    layer1 = {k for k in sd if k.startswith("bert.encoder.layer.1.")}
    assert layer1 == {f"bert.encoder.layer.1.{m}.LayerNorm.{s}" for m in ("attention.output", "output")
                      for s in ("weight", "bias")}
    cfg = json.loads((info.path / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["intermediate_size"], cfg["num_hidden_layers"]) \
        == (32, 4, 64, 2)
    assert cfg["pruned_heads"] == {"0": [1, 3], "1": [0, 1, 2, 3]}
    assert (cfg["layer_norm_eps"], cfg["hidden_act"], cfg["num_instances"]) == (1e-12, "gelu", 2)
    assert (cfg["muxing_variant"], cfg["demuxing_variant"], cfg["num_hidden_demux_layers"]) == \
        ("gaussian_hadamard", "index_pos", 3)
    assert cfg["legacy_demuxing"] is False
    assert cfg["id2label"] == {"0": "entailment", "1": "neutral", "2": "contradiction"}
    assert info.structure.head_counts == [2, 0] and info.structure.ffn_counts == [32, 0]
    # docs/checkpoint-formats.md §6: prunable = 2*(4*32^2+4*32) + 2*(2*32*64+5*32) = 8448 + 8512 = 16960;
    # remaining = 4*8*2*17 + 2*32*17 = 2176
    assert info.sparsity == pytest.approx(1 - 2176 / 16960)


@pytest.mark.parametrize("family,has_pruned_heads", [("prumux_compressed", True), ("cofi_compressed", True),
                                                     ("prumux_masked", False), ("muxplm", False),
                                                     ("cofi_masked", False), ("bert", False)])
def test_pruned_heads_bookkeeping_only_for_compressed(tmp_path, family, has_pruned_heads):
    info = write_checkpoint(tmp_path / "c", spec_for(family))
    cfg = json.loads((info.path / "config.json").read_text())
    assert ("pruned_heads" in cfg) == has_pruned_heads
    assert ("num_instances" in cfg) == (family in ("prumux_compressed", "prumux_masked", "muxplm"))


def test_full_families_have_full_shapes(tmp_path):
    sd = read_raw(write_checkpoint(tmp_path / "c", spec_for("muxplm")).path).state_dict
    assert sd["bert.encoder.layer.1.attention.self.key.weight"].shape == (32, 32)
    assert sd["bert.encoder.layer.1.intermediate.dense.weight"].shape == (64, 32)
    assert "layer_transformation.weight" not in sd
    sd = read_raw(write_checkpoint(tmp_path / "b", spec_for("bert")).path).state_dict
    assert not any(k.startswith(("instance_embedding", "demux", "retrieval_head")) for k in sd)
    assert sd["bert.pooler.dense.weight"].shape == (32, 32)


@pytest.mark.parametrize("num_instances,hidden,expected_chunks", [
    (2, 32, [(0, 16), (16, 32)]),
    (3, 32, [(0, 10), (10, 20), (20, 32)]),  # the last chunk extends to d
    (5, 32, [(0, 6), (6, 12), (12, 18), (18, 24), (24, 32)]),
])
def test_binary_hadamard_chunks(tmp_path, num_instances, hidden, expected_chunks):
    info = write_checkpoint(tmp_path / "c", SynthSpec("muxplm", num_instances=num_instances, hidden=hidden,
                                                      muxing_variant="binary_hadamard"))
    v = read_raw(info.path).state_dict["instance_embedding"]
    expected = torch.zeros(num_instances, hidden)
    for n, (a, b) in enumerate(expected_chunks):
        expected[n, a:b] = 1.0
    assert torch.equal(v, expected)


def test_gaussian_rows_unit_norm_and_ortho_orthogonal(tmp_path):
    g = read_raw(write_checkpoint(tmp_path / "g", SynthSpec("muxplm", num_instances=5)).path)
    assert torch.allclose(g.state_dict["instance_embedding"].norm(dim=1), torch.ones(5), atol=1e-6)
    o = read_raw(write_checkpoint(tmp_path / "o", SynthSpec("muxplm", muxing_variant="random_ortho")).path)
    v = o.state_dict["instance_embedding"]
    for n in range(2):
        assert torch.allclose(v[n] @ v[n].T, torch.eye(32), atol=1e-5)
    assert not torch.allclose(v[0], v[1])


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    a = read_raw(write_checkpoint(tmp_path / "a", SynthSpec("bert", seed=3)).path).state_dict
    b = read_raw(write_checkpoint(tmp_path / "b", SynthSpec("bert", seed=3)).path).state_dict
    c = read_raw(write_checkpoint(tmp_path / "c", SynthSpec("bert", seed=4)).path).state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["classifier.weight"], c["classifier.weight"])


# ------------------------------------------------------------------------------------------------
# names: aliases, tying, legacy LayerNorm names


@pytest.mark.parametrize("alias,prefixes", [
    ("all", {"demux_module.", "demultiplexer.demux_module.", "retrieval_head.demux_module."}),
    ("demux_module", {"demux_module."}),
    ("demultiplexer.demux_module", {"demultiplexer.demux_module."}),
    ("retrieval_head.demux_module", {"retrieval_head.demux_module."}),
])
def test_demux_aliases(tmp_path, alias, prefixes):
    info = write_checkpoint(tmp_path / "c", spec_for("prumux_masked", demux_alias=alias))
    stored = raw_file(info.path)
    found = {p for p in ("demux_module.", "demultiplexer.demux_module.", "retrieval_head.demux_module.")
             if f"{p}dense_1.weight" in stored}
    assert found == prefixes
    ptrs = {stored[f"{p}dense_1.weight"].data_ptr() for p in found}
    assert len(ptrs) == 1  # one shared tensor, as upstream's shared module
    assert "demux_module.dense_1.weight" in read_raw(info.path).state_dict


def test_tied_decoder_and_legacy_names(tmp_path):
    info = write_checkpoint(tmp_path / "c", spec_for("muxplm", legacy_ln_names=True))
    stored = raw_file(info.path)
    assert stored["retrieval_head.decoder.weight"].data_ptr() == \
        stored["bert.embeddings.word_embeddings.weight"].data_ptr()
    assert "bert.embeddings.LayerNorm.gamma" in stored and "bert.embeddings.LayerNorm.weight" not in stored
    assert "bert.encoder.layer.0.output.LayerNorm.beta" in stored
    assert "bert.embeddings.LayerNorm.weight" in read_raw(info.path).state_dict


def test_safetensors_decoder_only_word_embeddings_recovered(tmp_path):
    info = write_checkpoint(tmp_path / "c", spec_for("prumux_masked", safetensors=True,
                                                     safetensors_tied_name="decoder"))
    from safetensors.torch import load_file

    stored = load_file(str(info.path / "model.safetensors"))
    assert "bert.embeddings.word_embeddings.weight" not in stored
    raw = read_raw(info.path)
    assert torch.equal(raw.state_dict["bert.embeddings.word_embeddings.weight"],
                       stored["retrieval_head.decoder.weight"])


# ------------------------------------------------------------------------------------------------
# masks


@pytest.mark.parametrize("family", ["prumux_masked", "cofi_masked"])
@pytest.mark.parametrize("soft", [False, True])
def test_masks_shapes_and_exact_zeros(tmp_path, family, soft):
    info = write_checkpoint(tmp_path / "c", spec_for(family, soft_masks=soft))
    zs = torch.load(info.path / "zs.pt", weights_only=True)
    assert {k: tuple(v.shape) for k, v in zs.items()} == {
        "head_z": (2, 1, 4, 1, 1), "head_layer_z": (2,), "intermediate_z": (2, 1, 1, 64), "mlp_z": (2,),
        "hidden_z": (32,)}
    head = zs["head_z"].reshape(2, 4)
    inter = zs["intermediate_z"].reshape(2, 64)
    kept_head = torch.zeros(2, 4, dtype=torch.bool)
    kept_head[0, [0, 2]] = True
    kept_ffn = torch.zeros(2, 64, dtype=torch.bool)
    kept_ffn[0, 0::2] = True
    kept_hidden = torch.zeros(32, dtype=torch.bool)
    kept_hidden[HIDDEN] = True
    for z, kept in ((head, kept_head), (inter, kept_ffn), (zs["hidden_z"], kept_hidden),
                    (zs["head_layer_z"], torch.tensor([True, False])), (zs["mlp_z"], torch.tensor([True, False]))):
        assert torch.all(z[~kept] == 0.0)
        if soft:
            assert torch.all((z[kept] >= 0.2) & (z[kept] <= 0.99))
            assert z[kept].unique().numel() > 1 or z[kept].numel() == 1
        else:
            assert torch.all(z[kept] == 1.0)
    # weights stay full and unmasked
    sd = read_raw(info.path).state_dict
    assert sd["bert.encoder.layer.1.attention.self.query.weight"].abs().sum() > 0


@pytest.mark.parametrize("kind,layer_z,fine_z", [("head", "head_layer_z", "head_z"),
                                                  ("mlp", "mlp_z", "intermediate_z")])
def test_layer_z_only_f3(tmp_path, kind, layer_z, fine_z):
    kw = {"heads_kept": [[0, 1], []] if kind == "head" else None,
          "ffn_kept": [[0, 5], []] if kind == "mlp" else None}
    info = write_checkpoint(tmp_path / "c", SynthSpec("prumux_masked", layer_z_only=[(kind, 1)], **kw))
    zs = torch.load(info.path / "zs.pt", weights_only=True)
    assert zs[layer_z][1] == 1.0
    assert torch.all(zs[fine_z][1] == 0.0)
    counts = info.structure.head_counts if kind == "head" else info.structure.ffn_counts
    assert counts[1] == 0


# ------------------------------------------------------------------------------------------------
# compress_like_upstream


@pytest.mark.parametrize("masked,compressed,kw", [
    ("prumux_masked", "prumux_compressed", {}),
    ("prumux_masked", "prumux_compressed", {"muxing_variant": "binary_hadamard"}),
    ("prumux_masked", "prumux_compressed", {"muxing_variant": "random_ortho", "demuxing_variant": "mlp"}),
    ("prumux_masked", "prumux_compressed", {"demuxing_variant": "index", "num_layers": 3, "hidden": 48,
                                            "heads": 6, "heads_kept": [[1, 5], [], [0, 1, 2, 3, 4, 5]],
                                            "ffn_kept": [[3], list(range(64)), []], "hidden_kept": [0, 7, 47]}),
    ("cofi_masked", "cofi_compressed", {}),
    ("prumux_masked", "prumux_compressed", {"layer_z_only": [("head", 1)], "heads_kept": [[0, 2], []]}),
])
def test_compress_binary_equals_direct_slicing(tmp_path, masked, compressed, kw):
    b = write_checkpoint(tmp_path / "b", spec_for(masked, **kw))
    kw_a = {k: v for k, v in kw.items() if k != "layer_z_only"}
    a = write_checkpoint(tmp_path / "a", spec_for(compressed, **kw_a))
    c = compress_like_upstream(b.path, tmp_path / "c")
    ra, rc = read_raw(a.path), read_raw(c.path)
    assert rc.family == compressed
    assert set(ra.state_dict) == set(rc.state_dict)
    for key in ra.state_dict:
        assert torch.equal(ra.state_dict[key], rc.state_dict[key]), key
    assert ra.config["pruned_heads"] == rc.config["pruned_heads"]
    assert c.structure == a.structure


def test_compress_soft_masks_folds_like_update_params(tmp_path):
    """docs/checkpoint-formats.md §2.9 asymmetries, value by value: b2 not scaled by hidden_z, bo is; LayerNorms and
    the demux
    instance embedding are not scaled; the word table is scaled then sliced; Wv rows get head_z."""
    info = write_checkpoint(tmp_path / "b", spec_for("prumux_masked", soft_masks=True,
                                                     ffn_kept=[list(range(0, 64, 2)), [1, 2]]))
    b = read_raw(info.path)
    c = read_raw(compress_like_upstream(info.path, tmp_path / "c").path)
    zs, sb, sc = b.zs, b.state_dict, c.state_dict
    K = torch.tensor(HIDDEN)
    hz = zs["hidden_z"][K]
    hlz, mz = zs["head_layer_z"], zs["mlp_z"]
    head = zs["head_z"].reshape(2, 4)
    p = "bert.encoder.layer.0."
    rows = torch.cat([torch.arange(0, 8), torch.arange(16, 24)])  # heads 0 and 2, dh 8
    close = dict(rtol=1e-6, atol=1e-7)
    # embeddings: scaled by hidden_z, then sliced; their LayerNorm only sliced
    assert torch.allclose(sc["bert.embeddings.word_embeddings.weight"],
                          sb["bert.embeddings.word_embeddings.weight"][:, K] * hz, **close)
    assert torch.equal(sc["bert.embeddings.LayerNorm.weight"], sb["bert.embeddings.LayerNorm.weight"][K])
    # attention: Wv rows * head_z, input cols * hidden_z; Wo and bo * head_layer_z and rows * hidden_z
    zv = head[0].repeat_interleave(8)[rows]
    assert torch.allclose(sc[p + "attention.self.value.weight"],
                          sb[p + "attention.self.value.weight"][rows][:, K] * zv[:, None] * hz[None, :], **close)
    assert torch.allclose(sc[p + "attention.self.value.bias"], sb[p + "attention.self.value.bias"][rows] * zv, **close)
    assert torch.allclose(sc[p + "attention.self.query.bias"], sb[p + "attention.self.query.bias"][rows], **close)
    assert torch.allclose(sc[p + "attention.output.dense.bias"],
                          sb[p + "attention.output.dense.bias"][K] * hlz[0] * hz, **close)
    assert torch.equal(sc[p + "attention.output.LayerNorm.bias"], sb[p + "attention.output.LayerNorm.bias"][K])
    # FFN: W2 cols * intermediate_z, all * mlp_z, rows * hidden_z; b2 * mlp_z only (NOT hidden_z)
    f = torch.arange(0, 64, 2)
    iz = zs["intermediate_z"].reshape(2, 64)[0, f]
    assert torch.allclose(sc[p + "output.dense.weight"],
                          sb[p + "output.dense.weight"][K][:, f] * iz[None, :] * mz[0] * hz[:, None], **close)
    assert torch.allclose(sc[p + "output.dense.bias"], sb[p + "output.dense.bias"][K] * mz[0], **close)
    assert torch.equal(sc[p + "intermediate.dense.bias"], sb[p + "intermediate.dense.bias"][f])
    # mux / demux: instance vectors scaled, demux instance embedding not; dense_1 both halves scaled
    assert torch.allclose(sc["instance_embedding"], sb["instance_embedding"][:, K] * hz, **close)
    assert torch.equal(sc["demux_module.demux_instance_embedding"], sb["demux_module.demux_instance_embedding"][:, K])
    w1 = sb["demux_module.dense_1.weight"]
    assert torch.allclose(sc["demux_module.dense_1.weight"],
                          torch.cat([w1[:, K] * hz, w1[:, K + 32] * hz], dim=1), **close)
    # pooler input columns scaled; layer_transformation and classifier untouched
    assert torch.allclose(sc["bert.pooler.dense.weight"], sb["bert.pooler.dense.weight"][:, K] * hz, **close)
    assert torch.equal(sc["layer_transformation.weight"], sb["layer_transformation.weight"][:, K])
    assert torch.equal(sc["classifier.weight"], sb["classifier.weight"])
    # tied decoder keeps the scaled FULL table (pruned dims exactly 0)
    dec = sc["retrieval_head.decoder.weight"]
    assert dec.shape == (64, 32) and torch.all(dec[:, [3, 5]] == 0)


def test_compress_refuses_compressed_input(tmp_path):
    info = write_checkpoint(tmp_path / "a", spec_for("prumux_compressed"))
    with pytest.raises(CheckpointError, match="zs.pt"):
        compress_like_upstream(info.path, tmp_path / "c")


@pytest.mark.parametrize("kw,match", [
    ({"family": "nope"}, "unknown family"),
    ({"family": "muxplm", "heads_kept": [[0], [0, 1, 2, 3]]}, "unpruned"),
    ({"family": "prumux_compressed", "soft_masks": True}, "masked families"),
    ({"family": "prumux_masked", "heads_kept": [[0]]}, "one list per layer"),
    ({"family": "prumux_masked", "heads_kept": [[0, 9], [1]]}, "0..3"),
    ({"family": "bert", "hidden": 30, "heads": 4}, "multiple"),
    ({"family": "muxplm", "muxing_variant": "gaussian_attention_v2"}, "muxing_variant"),
    ({"family": "prumux_masked", "hidden_kept": []}, "at least one"),
])
def test_bad_specs(tmp_path, kw, match):
    with pytest.raises(InputError, match=match):
        write_checkpoint(tmp_path / "c", SynthSpec(**kw))


def test_refuses_non_empty_dir(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("x")
    with pytest.raises(InputError, match="not an empty directory"):
        write_checkpoint(tmp_path / "c", SynthSpec("bert"))


def test_cofi_sparsity_formula_bert_base():
    """docs/checkpoint-formats.md §6: BERT-base prunable size is 85,017,600; keeping 6 heads x 12 layers and half the
    FFN at d' = 768
    leaves 256*72*768 + 2*(12*1536)*768 parameters."""
    from prumux_compile.demo.synthetic import KeptStructure, cofi_sparsity

    st = KeptStructure([list(range(6))] * 12, [list(range(1536))] * 12, list(range(768)))
    remaining = 256 * 72 * 768 + 2 * 12 * 1536 * 768
    assert cofi_sparsity(st, 12, 768, 3072, 64) == pytest.approx(1 - remaining / 85_017_600)
    assert math.isclose(12 * (4 * 768 ** 2 + 4 * 768) + 12 * (2 * 768 * 3072 + 5 * 768), 85_017_600)
