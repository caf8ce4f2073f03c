"""Field faults F20–F22, F25, F26, F28 (docs/field-faults.md), front end: checkpoint reading, config fields,
reference and kernels, example inputs, feeds, external-data export. Each kind is a table of several instances."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prumux_compile.checkpoint import read_raw
from prumux_compile.errors import CheckpointError
from prumux_compile.demo.synthetic import SynthSpec, break_file, write_checkpoint

SMALL = dict(vocab=1024, max_pos=40, num_layers=2, hidden=16, heads=2, ffn=24)


def _write(tmp_path, name="ckpt", **fields):
    fields = {**SMALL, **fields}
    write_checkpoint(tmp_path / name, SynthSpec(**fields))
    return tmp_path / name


# ------------------------------------------------------------------------------------------------------------------
# F28 in docs/field-faults.md: a weights file that is not a checkpoint is named for what it is
# ------------------------------------------------------------------------------------------------------------------
F28_CASES = [
    # (id, SynthSpec fields, text the error must contain)
    ("bin-lfs", dict(family="bert", broken_file="lfs-pointer"), "a Git LFS pointer"),
    ("safetensors-lfs", dict(family="bert", safetensors=True, broken_file="lfs-pointer"), "a Git LFS pointer"),
    ("zs-lfs", dict(family="cofi_masked", broken_file="lfs-pointer", broken_target="zs"), "a Git LFS pointer"),
    ("shard-lfs", dict(family="muxplm", shards=3, broken_file="lfs-pointer"), "a Git LFS pointer"),
    ("bin-empty", dict(family="bert", broken_file="empty"), "empty (0 bytes)"),
    ("safetensors-empty", dict(family="bert", safetensors=True, broken_file="empty"), "empty (0 bytes)"),
    ("zs-empty", dict(family="prumux_masked", broken_file="empty", broken_target="zs"), "empty (0 bytes)"),
    ("shard-empty", dict(family="bert", shards=2, safetensors=True, broken_file="empty"), "empty (0 bytes)"),
    ("bin-text", dict(family="bert", broken_file="text"), "a text file"),
    ("safetensors-text", dict(family="bert", safetensors=True, broken_file="text"), "a text file"),
    ("zs-text", dict(family="cofi_masked", broken_file="text", broken_target="zs"), "a text file"),
    ("bin-random", dict(family="bert", broken_file="random"), "not a PyTorch file"),
    ("zs-random", dict(family="cofi_masked", broken_file="random", broken_target="zs"), "not a PyTorch file"),
    ("shard-random", dict(family="bert", shards=2, broken_file="random"), "not a PyTorch file"),
    ("bin-plain-pickle", dict(family="bert", broken_file="plain-pickle"), "a plain pickle"),
    ("bin-code-pickle", dict(family="bert", broken_file="code-pickle"), "needs arbitrary code"),
    ("zs-code-pickle", dict(family="cofi_masked", broken_file="code-pickle", broken_target="zs"),
     "needs arbitrary code"),
    ("bin-truncated", dict(family="bert", broken_file="truncated"), "truncated"),
    ("safetensors-truncated", dict(family="bert", safetensors=True, broken_file="truncated"), "truncated"),
]


@pytest.mark.parametrize("fields,expected", [c[1:] for c in F28_CASES], ids=[c[0] for c in F28_CASES])
def test_f28_not_a_checkpoint(tmp_path, fields, expected, capsys):
    path = _write(tmp_path, **fields)
    with pytest.raises(CheckpointError) as err:
        read_raw(path)
    msg = str(err.value)
    assert expected in msg and "\n" not in msg
    assert (expected == "needs arbitrary code") == ("needs arbitrary code" in msg)
    if expected == "a Git LFS pointer":
        assert "git lfs pull" in msg
    assert "code ran while unpickling" not in capsys.readouterr().out


def test_f28_code_in_a_torch_archive_and_misnamed_safetensors(tmp_path, capsys):
    from prumux_compile.demo.synthetic import _CallsPrint

    path = _write(tmp_path, family="bert")
    sd = torch.load(path / "pytorch_model.bin", weights_only=True)
    torch.save({**sd, "extra": _CallsPrint()}, path / "pytorch_model.bin")  # a real torch archive with code
    with pytest.raises(CheckpointError, match="needs arbitrary code.*print"):
        read_raw(path)
    assert "code ran" not in capsys.readouterr().out
    from safetensors.torch import save_file

    save_file(sd, str(path / "pytorch_model.bin"))
    with pytest.raises(CheckpointError, match="a safetensors file under a PyTorch name"):
        read_raw(path)


def test_f28_lfs_pointer_is_130_bytes_like_git_writes(tmp_path):
    path = _write(tmp_path, family="bert", broken_file="lfs-pointer")
    text = (path / "pytorch_model.bin").read_text()
    assert text.startswith("version https://git-lfs.github.com/spec/v1\noid sha256:")
    assert 120 <= len(text) <= 140


# ------------------------------------------------------------------------------------------------------------------
# F25 in docs/field-faults.md: sharded checkpoints (safetensors and .bin, with their index files); hashes cover every shard
# ------------------------------------------------------------------------------------------------------------------
F25_CASES = [
    # (id, SynthSpec fields, index file, number of shards)
    ("bert-safetensors-2", dict(family="bert", safetensors=True, shards=2), "model.safetensors.index.json", 2),
    ("bert-bin-3", dict(family="bert", shards=3), "pytorch_model.bin.index.json", 3),
    ("muxplm-safetensors-4", dict(family="muxplm", num_instances=2, safetensors=True, shards=4),
     "model.safetensors.index.json", 4),
    ("prumux-masked-bin-2", dict(family="prumux_masked", num_instances=2, shards=2, hidden_kept=list(range(12))),
     "pytorch_model.bin.index.json", 2),
    ("cofi-compressed-safetensors-3", dict(family="cofi_compressed", safetensors=True, shards=3,
                                           heads_kept=[[0], [1]]), "model.safetensors.index.json", 3),
]


@pytest.mark.parametrize("fields,index,n", [c[1:] for c in F25_CASES], ids=[c[0] for c in F25_CASES])
def test_f25_sharded_equals_single_file(tmp_path, fields, index, n):
    import hashlib

    single = read_raw(_write(tmp_path, "single", **{**fields, "shards": 0}))
    path = _write(tmp_path, "sharded", **fields)
    shard_files = sorted(p.name for p in path.iterdir() if "-of-" in p.name)
    assert len(shard_files) == n and all(f"-of-{n:05d}." in f for f in shard_files)
    raw = read_raw(path)
    assert raw.family == single.family
    assert sorted(raw.state_dict) == sorted(single.state_dict)
    for k, v in single.state_dict.items():
        assert torch.equal(raw.state_dict[k], v), k
    # provenance: the index and every shard, each with its own sha256
    assert set(raw.files) >= {"config.json", index, *shard_files}
    for name in (index, *shard_files):
        assert raw.files[name] == hashlib.sha256((path / name).read_bytes()).hexdigest()


def _shard_dir(tmp_path, **extra):
    return _write(tmp_path, family="bert", safetensors=True, shards=3, **extra)


def _drop_key_from_index(path):
    idx = json.loads((path / "model.safetensors.index.json").read_text())
    idx["weight_map"].pop(sorted(idx["weight_map"])[0])
    (path / "model.safetensors.index.json").write_text(json.dumps(idx))


def _add_key_to_index(path):
    idx = json.loads((path / "model.safetensors.index.json").read_text())
    idx["weight_map"]["bert.extra.weight"] = "model-00001-of-00003.safetensors"
    (path / "model.safetensors.index.json").write_text(json.dumps(idx))


F25_BAD = [
    ("missing-shard", lambda p: (p / "model-00002-of-00003.safetensors").unlink(),
     "1 of 3 shard(s) listed in the index are missing (model-00002-of-00003.safetensors)"),
    ("two-missing", lambda p: [(p / f"model-0000{k}-of-00003.safetensors").unlink() for k in (1, 3)],
     "2 of 3 shard(s)"),
    ("no-index", lambda p: (p / "model.safetensors.index.json").unlink(), "without their index"),
    ("index-not-json", lambda p: (p / "model.safetensors.index.json").write_text("{oops"), "not valid JSON"),
    ("index-lfs", lambda p: break_file(p / "model.safetensors.index.json", "lfs-pointer"), "a Git LFS pointer"),
    ("index-no-weight-map", lambda p: (p / "model.safetensors.index.json").write_text('{"metadata": {}}'),
     "no \"weight_map\""),
    ("shard-has-unlisted-key", _drop_key_from_index, "does not list"),
    ("index-lists-absent-key", _add_key_to_index, "lacks 1 tensor(s) the index assigns to it (first: bert.extra"),
    ("shard-path-escapes", lambda p: (p / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "../x.safetensors"}})), "is not a file name"),
    # finding 17c: a stale single file next to the index (transformers silently takes one): refused, both named
    ("stale-single-bin", lambda p: torch.save({"w": torch.zeros(2)}, p / "pytorch_model.bin"),
     "both a single weights file (pytorch_model.bin) and a sharded checkpoint's index (model.safetensors.index.json) "
     "are here"),
    ("stale-single-safetensors", lambda p: (p / "model.safetensors").write_bytes(b"x"),
     "both a single weights file (model.safetensors) and a sharded checkpoint's index (model.safetensors.index.json)"
     " are here; they may be two different saves and which one is meant cannot be told: delete the one that is "
     "stale"),
]


@pytest.mark.parametrize("corrupt,expected", [c[1:] for c in F25_BAD], ids=[c[0] for c in F25_BAD])
def test_f25_bad_shards(tmp_path, corrupt, expected):
    path = _shard_dir(tmp_path)
    corrupt(path)
    with pytest.raises(CheckpointError) as err:
        read_raw(path)
    assert expected in str(err.value)


# ------------------------------------------------------------------------------------------------------------------
# F21 in docs/field-faults.md: uniform wrapper prefixes are removed; a bare encoder gets "no classifier head"; errors list the first keys
# ------------------------------------------------------------------------------------------------------------------
F21_PREFIXES = [
    ("bert-module", dict(family="bert"), "module."),
    ("bert-model-safetensors", dict(family="bert", safetensors=True), "model."),
    ("muxplm-module-model", dict(family="muxplm", num_instances=2), "module.model."),
    ("prumux-masked-module-shards", dict(family="prumux_masked", num_instances=2, shards=2,
                                          hidden_kept=list(range(10))), "module."),
    ("cofi-compressed-lightning", dict(family="cofi_compressed", heads_kept=[[1], []]), "model.classifier_model."),
    ("prumux-compressed-gamma-beta", dict(family="prumux_compressed", num_instances=3, legacy_ln_names=True,
                                          ffn_kept=[[0, 5], list(range(24))]), "module."),
]


@pytest.mark.parametrize("fields,prefix", [c[1:] for c in F21_PREFIXES], ids=[c[0] for c in F21_PREFIXES])
def test_f21_wrapper_prefix_is_removed(tmp_path, fields, prefix):
    from prumux_compile import reference

    plain = read_raw(_write(tmp_path, "plain", **fields))
    wrapped_dir = _write(tmp_path, "wrapped", key_prefix=prefix, **fields)
    stored = (torch.load(wrapped_dir / "pytorch_model.bin", weights_only=True)
              if (wrapped_dir / "pytorch_model.bin").is_file() else None)
    if stored is not None:
        assert all(k.startswith(prefix) for k in stored)
    raw = read_raw(wrapped_dir)
    assert raw.key_prefix == prefix and plain.key_prefix == ""
    assert raw.family == plain.family
    assert sorted(raw.state_dict) == sorted(plain.state_dict)
    ids = torch.tensor([[101, 7, 9, 102], [101, 30, 102, 0]])
    torch.testing.assert_close(reference.forward(raw, ids, seq_len=8), reference.forward(plain, ids, seq_len=8),
                               atol=0, rtol=0)


def _bare_encoder(sd, prefix=""):
    return {prefix + k[len("bert."):]: v for k, v in sd.items() if k.startswith("bert.")}


def _save(path, sd):
    torch.save(sd, path / "pytorch_model.bin")


F21_BAD = [
    ("bare-encoder", lambda sd: _bare_encoder(sd), "no classifier head: the weights are a bare BERT encoder"),
    ("bare-encoder-module", lambda sd: _bare_encoder(sd, "module."), "no classifier head: the weights are a bare"),
    ("bert-without-classifier", lambda sd: {k: v for k, v in sd.items() if not k.startswith("classifier.")},
     "no classifier head (classifier.weight is missing)"),
    ("pretraining-heads-only", lambda sd: {**{k: v for k, v in sd.items() if not k.startswith("classifier.")},
                                           "cls.predictions.bias": torch.zeros(4)}, "no classifier head"),
    ("bare-trunk-with-classifier", lambda sd: {**_bare_encoder(sd), "classifier.weight": sd["classifier.weight"],
                                               "classifier.bias": sd["classifier.bias"]}, "lack the 'bert.' prefix"),
    ("mixed-prefixes", lambda sd: {("module." + k if i % 2 else k): v for i, (k, v) in enumerate(sd.items())},
     "prefix(es) 'bert.', 'module.', which not every key shares"),
    ("two-wrappers", lambda sd: {("a." if "embeddings" in k else "b.") + k: v for k, v in sd.items()},
     "prefix(es) 'a.', 'b.', which not every key shares"),
    ("not-bert", lambda sd: {"conv1.weight": torch.ones(2), "fc.bias": torch.ones(2)},
     "not a BERT checkpoint. First keys: conv1.weight, fc.bias"),
]


@pytest.mark.parametrize("edit,expected", [c[1:] for c in F21_BAD], ids=[c[0] for c in F21_BAD])
def test_f21_bad_keys(tmp_path, edit, expected):
    path = _write(tmp_path, family="bert")
    sd = torch.load(path / "pytorch_model.bin", weights_only=True)
    _save(path, edit(sd))
    with pytest.raises(CheckpointError) as err:
        read_raw(path)
    msg = str(err.value)
    assert expected in msg and "First keys:" in msg
    assert "not a BERT checkpoint" not in msg or "not-bert" in msg or expected.startswith("not")


# ------------------------------------------------------------------------------------------------------------------
# F22 in docs/field-faults.md: every config field that changes the forward pass is implemented on both sides or refused; nothing unread
# ------------------------------------------------------------------------------------------------------------------
import math  # noqa: E402

import numpy as np  # noqa: E402

from prumux_compile import reference  # noqa: E402
from prumux_compile.checkpoint import from_raw, unread_config_fields  # noqa: E402
from prumux_compile.ir import ACTIVATIONS  # noqa: E402
from prumux_compile.kernels import build_module  # noqa: E402
from prumux_compile.kernels.activations import activation_function  # noqa: E402
from prumux_compile.passes import compile_ir  # noqa: E402


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def _erf_gelu(x):
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def _tanh_gelu(x):
    return 0.5 * x * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


# Scalar formulas of transformers' ACT2FN, written out here a third time (Python floats).
FORMULAS = {
    "gelu": _erf_gelu, "gelu_python": _erf_gelu, "gelu_new": _tanh_gelu, "gelu_pytorch_tanh": _tanh_gelu,
    "gelu_python_tanh": _tanh_gelu, "gelu_accurate": _tanh_gelu,
    "gelu_fast": lambda x: 0.5 * x * (1.0 + math.tanh(0.7978845608 * x * (1.0 + 0.044715 * x * x))),
    "gelu_10": lambda x: min(10.0, max(-10.0, _erf_gelu(x))), "quick_gelu": lambda x: x * _sig(1.702 * x),
    "relu": lambda x: max(x, 0.0), "relu2": lambda x: max(x, 0.0) ** 2, "relu6": lambda x: min(max(x, 0.0), 6.0),
    "leaky_relu": lambda x: x if x >= 0 else 0.01 * x, "silu": lambda x: x * _sig(x), "swish": lambda x: x * _sig(x),
    "mish": lambda x: x * math.tanh(math.log1p(math.exp(x))),
    "hardswish": lambda x: x * min(max(x + 3.0, 0.0), 6.0) / 6.0, "tanh": math.tanh, "sigmoid": _sig,
    "linear": lambda x: x,
}
POINTS = [-7.5, -3.0, -1.0, -0.25, 0.0, 0.4, 1.0, 2.5, 7.0, 12.0]


def test_f22_activation_names_agree_everywhere():
    assert set(FORMULAS) == set(ACTIVATIONS) == set(reference._ACTIVATIONS)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_f22_activation_values(name):
    import transformers.activations as hf

    x = torch.tensor(POINTS, dtype=torch.float64)
    want = torch.tensor([FORMULAS[name](v) for v in POINTS], dtype=torch.float64)
    torch.testing.assert_close(reference._ACTIVATIONS[name](x), want, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(activation_function(name)(x), want, atol=1e-9, rtol=1e-9)
    if name in hf.ACT2CLS:  # transformers' own module, where this version has the name
        torch.testing.assert_close(hf.get_activation(name)(x), want, atol=1e-9, rtol=1e-9)


F22_FAMILIES = [
    ("bert", dict(family="bert")),
    ("cofi-compressed", dict(family="cofi_compressed", heads_kept=[[1], [0, 1]], ffn_kept=[[0, 3, 9], []])),
    ("cofi-masked-soft", dict(family="cofi_masked", soft_masks=True, hidden_kept=list(range(2, 16)),
                              ffn_kept=[list(range(10)), list(range(24))])),
    ("prumux-compressed", dict(family="prumux_compressed", num_instances=2, ffn_kept=[list(range(20)), [4]])),
    ("muxplm-index", dict(family="muxplm", num_instances=3, demuxing_variant="index")),
]
F22_ACTS = ["relu", "gelu_new", "quick_gelu", "silu", "mish", "gelu_fast", "leaky_relu", "hardswish"]


def _logits_both(path, b=5, s=12, seq_len=16):
    from tests.conftest import make_inputs

    raw = read_raw(path)
    ir, _ = compile_ir(from_raw(raw, seq_len=seq_len), "all")
    ids, mask, tt = make_inputs(b, s, SMALL["vocab"], seed=3)
    with torch.no_grad():
        got = build_module(ir)(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(tt))
    ref = reference.forward(raw, ids, mask, tt, seq_len=seq_len, dtype=torch.float64)
    return got.double(), ref, ir


@pytest.mark.parametrize("act", F22_ACTS)
@pytest.mark.parametrize("fields", [c[1] for c in F22_FAMILIES], ids=[c[0] for c in F22_FAMILIES])
def test_f22_activation_compiled_equals_reference(tmp_path, one_torch_thread, fields, act):
    got, ref, ir = _logits_both(_write(tmp_path, "act", hidden_act=act, **fields))
    assert ir.activation == act
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    _, gelu_ref, _ = _logits_both(_write(tmp_path, "gelu", **fields))
    assert (ref - gelu_ref).abs().max() > 1e-6  # the field is not ignored: same weights, other activation


@pytest.mark.parametrize("act", ["relu", "gelu_new", "gelu_pytorch_tanh", "quick_gelu", "silu", "mish", "gelu_10"])
def test_f22_reference_equals_transformers_bert(tmp_path, act):
    import transformers

    path = _write(tmp_path, family="bert", hidden_act=act, layer_norm_eps=1e-7)
    raw = read_raw(path)
    cfg = transformers.BertConfig(**{k: v for k, v in raw.config.items() if k not in ("architectures",)})
    cfg._attn_implementation = "eager"
    model = transformers.BertForSequenceClassification(cfg).eval()
    sd = {k: v for k, v in raw.state_dict.items() if k in model.state_dict()}
    model.load_state_dict(sd, strict=False)
    from tests.conftest import make_inputs

    ids, mask, tt = make_inputs(4, 10, SMALL["vocab"], seed=5)
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                     token_type_ids=torch.from_numpy(tt)).logits.double()
    torch.testing.assert_close(reference.forward(raw, ids, mask, tt, dtype=torch.float64), want, atol=2e-5, rtol=0)


@pytest.mark.parametrize("eps", [1e-12, 1e-5, 0.3])
@pytest.mark.parametrize("fields", [
    dict(family="bert"), dict(family="muxplm", num_instances=2), dict(family="muxplm", num_instances=2,
                                                                      demuxing_variant="mlp"),
    dict(family="prumux_compressed", num_instances=2, legacy_demuxing=True, hidden_kept=list(range(12))),
    dict(family="prumux_masked", num_instances=2, demuxing_variant="index", soft_masks=True),
], ids=["bert", "index-pos", "mlp", "legacy-hidden-pruned", "index-masked-soft"])
def test_f22_layer_norm_eps_everywhere(tmp_path, one_torch_thread, fields, eps):
    """A large eps changes every LayerNorm's output, the demultiplexer's included: compiled and reference agree
    only if both apply config.layer_norm_eps in the same LayerNorms."""
    got, ref, ir = _logits_both(_write(tmp_path, "eps", layer_norm_eps=eps, **fields))
    assert ir.eps == eps
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    if eps == 0.3:
        _, ref_small, _ = _logits_both(_write(tmp_path, "small", **fields))
        assert (ref - ref_small).abs().max() > 1e-2


F22_REFUSED = [
    # (id, family, config changes, field named)
    ("act-laplace", "bert", dict(hidden_act="laplace"), "hidden_act='laplace'"),
    ("act-prelu", "prumux_compressed", dict(hidden_act="prelu"), "hidden_act='prelu'"),
    ("act-xielu", "muxplm", dict(hidden_act="xielu"), "hidden_act='xielu'"),
    ("act-swiglu", "cofi_masked", dict(hidden_act="swiglu"), "hidden_act='swiglu'"),
    ("act-null", "bert", dict(hidden_act=None), "hidden_act=None"),
    ("act-number", "bert", dict(hidden_act=3), "hidden_act=3"),
    ("pos-relative-key", "bert", dict(position_embedding_type="relative_key"),
     "position_embedding_type='relative_key'"),
    ("pos-relative-key-query", "muxplm", dict(position_embedding_type="relative_key_query"),
     "position_embedding_type='relative_key_query'"),
    ("pos-null", "cofi_compressed", dict(position_embedding_type=None), "position_embedding_type=None"),
    ("decoder", "bert", dict(is_decoder=True), "is_decoder=True"),
    ("cross-attention", "muxplm", dict(add_cross_attention=True), "add_cross_attention=True"),
    ("eps-zero", "bert", dict(layer_norm_eps=0), "layer_norm_eps=0"),
    ("eps-negative", "prumux_masked", dict(layer_norm_eps=-1e-5), "layer_norm_eps=-1e-05"),
    ("eps-string", "bert", dict(layer_norm_eps="1e-12"), "layer_norm_eps='1e-12'"),
    ("eps-bool", "bert", dict(layer_norm_eps=True), "layer_norm_eps=True"),
    ("model-roberta", "bert", dict(model_type="roberta"), "model_type='roberta'"),
    ("model-electra", "muxplm", dict(model_type="electra"), "model_type='electra'"),
    ("problem-ranking", "bert", dict(problem_type="ranking"), "problem_type='ranking'"),
    ("n-disagrees", "muxplm", dict(num_instances=3), "num_instances=3"),
    ("n-without-mux", "bert", dict(num_instances=2), "num_instances=2"),
    ("pad-id-1-muxed", "prumux_compressed", dict(pad_token_id=1), "pad_token_id=1"),
    ("demux-layers-null", "muxplm", dict(num_hidden_demux_layers=None), "num_hidden_demux_layers=None"),
    ("demux-layers-zero", "muxplm", dict(num_hidden_demux_layers=0), "num_hidden_demux_layers=0"),
    ("demux-layers-string", "prumux_compressed", dict(num_hidden_demux_layers="3"), "num_hidden_demux_layers='3'"),
    ("legacy-string", "prumux_compressed", dict(legacy_demuxing="false"), "legacy_demuxing='false'"),
]


@pytest.mark.parametrize("family,changes,named", [c[1:] for c in F22_REFUSED], ids=[c[0] for c in F22_REFUSED])
def test_f22_refused_at_load_and_by_the_reference(tmp_path, family, changes, named):
    import dataclasses

    path = _write(tmp_path, family=family, num_instances=2, config_overrides=changes)
    with pytest.raises(CheckpointError) as err:
        read_raw(path)
    assert f"config.json {named}" in str(err.value)
    # the reference refuses on its own too (it never relies on the loader's checks)
    good = read_raw(_write(tmp_path, "good", family=family, num_instances=2))
    bad = dataclasses.replace(good, config={**good.config, **changes})
    field_name = named.split("=")[0]
    if field_name in ("hidden_act", "layer_norm_eps", "position_embedding_type", "is_decoder",
                      "add_cross_attention", "model_type", "num_hidden_demux_layers", "legacy_demuxing"):
        with pytest.raises(CheckpointError, match=field_name):
            reference.forward(bad, torch.tensor([[101, 5, 102, 0]]), seq_len=8)


NO_EFFECT = [
    dict(chunk_size_feed_forward=3), dict(classifier_dropout=0.9, hidden_dropout_prob=0.5,
                                          attention_probs_dropout_prob=0.7),
    dict(use_cache=False, torchscript=True, output_attentions=False, return_dict=False),
    dict(problem_type="multi_label_classification"), dict(tie_word_embeddings=False, dtype="float16"),
    dict(position_embedding_type="absolute", is_decoder=False, add_cross_attention=False, model_type="bert"),
    dict(gradient_checkpointing=True, initializer_range=0.5, pooler_type="first_token_transform"),
]


@pytest.mark.parametrize("family", ["bert", "prumux_compressed"])
def test_f22_fields_without_effect_change_nothing(tmp_path, family):
    _, base, _ = _logits_both(_write(tmp_path, "base", family=family), b=3, s=9, seq_len=12)
    for i, changes in enumerate(NO_EFFECT):
        got, ref, _ = _logits_both(_write(tmp_path, f"c{i}", family=family, config_overrides=changes), b=3, s=9,
                                   seq_len=12)
        torch.testing.assert_close(ref, base, atol=0, rtol=0)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    raw = read_raw(_write(tmp_path, "unread", family=family, config_overrides={"pooler_type": "x", "my_field": 1}))
    assert unread_config_fields(raw.config) == ["my_field", "pooler_type"]
    from click.testing import CliRunner

    from prumux_compile.cli.main import cli

    res = CliRunner().invoke(cli, ["inspect", "--json", "--seq-len", "16", str(raw.path)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["config_fields_unread"] == ["my_field", "pooler_type"]


def _add(key, shape=(4,)):
    def edit(sd):
        sd[key] = torch.ones(shape)
    return edit


def _drop_config(name):
    def edit(path):
        cfg = json.loads((path / "config.json").read_text())
        cfg.pop(name)
        (path / "config.json").write_text(json.dumps(cfg))
    return edit


F22_UNREAD = [
    # (id, family, state-dict edit (or None), directory edit (or None), first unread key named)
    ("mlm-head", "bert", _add("cls.predictions.bias"), None, "cls.predictions.bias"),
    ("nsp-head", "cofi_compressed", _add("cls.seq_relationship.weight", (2, 16)), None, "cls.seq_relationship"),
    ("relative-positions", "bert", _add("bert.encoder.layer.0.attention.self.distance_embedding.weight", (79, 8)),
     None, "distance_embedding"),
    ("demux-beyond-kd", "muxplm", _add("demux_module.dense_7.weight", (16, 16)), None, "demux_module.dense_7"),
    ("kd-missing-from-config", "muxplm", None, _drop_config("num_hidden_demux_layers"), "demux_module.dense_3"),
    ("extra-wrapper-key", "prumux_masked", _add("optimizer.step", (1,)), None, "optimizer.step"),
    ("second-classifier", "bert", _add("classifier2.weight", (3, 16)), None, "classifier2.weight"),
]


@pytest.mark.parametrize("sd_edit,dir_edit,named", [c[2:] for c in F22_UNREAD], ids=[c[0] for c in F22_UNREAD])
def test_f22_unread_weights_are_an_error(tmp_path, request, sd_edit, dir_edit, named):
    family = next(c[1] for c in F22_UNREAD if c[0] == request.node.callspec.id)
    path = _write(tmp_path, family=family, num_instances=2)
    if sd_edit is not None:
        sd = torch.load(path / "pytorch_model.bin", weights_only=True)
        sd_edit(sd)
        torch.save(sd, path / "pytorch_model.bin")
    if dir_edit is not None:
        dir_edit(path)
    with pytest.raises(CheckpointError) as err:
        from_raw(read_raw(path), seq_len=16)
    assert "that nothing reads" in str(err.value) and named in str(err.value)


@pytest.mark.parametrize("fields", [
    dict(family="prumux_compressed", heads_kept=[[], [0]], ffn_kept=[[], [1, 2]]),  # removed sublayers keep LNs
    dict(family="prumux_masked", hidden_kept=list(range(8))),  # pooler, layer_transformation, retrieval head
    dict(family="muxplm", legacy_demuxing=True),  # dense_2.., layer_norm_2.. belong to the retrieval head
    dict(family="muxplm", demuxing_variant="mlp"), dict(family="cofi_masked"),
], ids=["removed-sublayers", "masked-training-modules", "legacy-retrieval-demux", "mlp", "cofi-masked"])
def test_f22_keys_unread_on_purpose_are_accepted_and_read_alike(tmp_path, fields):
    """Loader and reference read the same tensors (an audit of their shared assumptions about what matters)."""
    import dataclasses

    from prumux_compile.checkpoint import _build_ir, _ReadRecorder

    raw = read_raw(_write(tmp_path, num_instances=2, **fields))
    from_raw(raw, seq_len=16)  # no unread tensor
    loader = _ReadRecorder(raw.state_dict)
    _build_ir(dataclasses.replace(raw, state_dict=loader), seq_len=16)
    ref = _ReadRecorder(raw.state_dict)
    reference.forward(dataclasses.replace(raw, state_dict=ref), torch.tensor([[101, 7, 102]]), seq_len=16)
    assert ref.read == loader.read


def test_f22_unknown_zs_masks_and_inconsistent_aliases(tmp_path):
    path = _write(tmp_path, family="cofi_masked")
    zs = torch.load(path / "zs.pt", weights_only=True)
    torch.save({**zs, "qk_head_dim_z": torch.ones(2, 8)}, path / "zs.pt")
    with pytest.raises(CheckpointError, match="mask\\(s\\) qk_head_dim_z are not implemented"):
        read_raw(path)
    torch.save({**zs, "unused": None}, path / "zs.pt")  # a None entry carries nothing
    assert read_raw(path).zs.keys() == zs.keys()
    path = _write(tmp_path, "mux", family="muxplm", num_instances=2)
    sd = torch.load(path / "pytorch_model.bin", weights_only=True)
    sd["retrieval_head.demux_module.dense_1.bias"] = sd["retrieval_head.demux_module.dense_1.bias"] + 1.0
    torch.save(sd, path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="differs from another alias"):
        read_raw(path)


def test_f22_problem_type_and_activation_in_the_ir(tmp_path):
    from prumux_compile.errors import IRInvariantError
    from prumux_compile.ir import check_invariants

    reg = from_raw(read_raw(_write(tmp_path, "reg", family="bert", num_labels=1)))
    assert reg.problem_type == "regression"
    assert from_raw(read_raw(_write(tmp_path, "cls", family="bert"))).problem_type == "single_label_classification"
    multi = from_raw(read_raw(_write(tmp_path, "multi", family="bert",
                                     config_overrides={"problem_type": "multi_label_classification"})))
    assert multi.problem_type == "multi_label_classification"
    reg.activation = "swiglu"
    with pytest.raises(IRInvariantError, match="swiglu"):
        check_invariants(reg)
    with pytest.raises(IRInvariantError, match="swiglu"):
        build_module(reg)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_f22_every_activation_exports_to_standard_onnx_and_validates(tmp_path, one_torch_thread, act):
    import onnxruntime as ort

    from prumux_compile.export.inputs import realistic_inputs
    from prumux_compile.export.onnx_export import check_onnx, export_onnx
    from prumux_compile.export.spec import spec_for_ir

    fields = dict(family="prumux_compressed", num_instances=2) if act in ("mish", "hardswish", "gelu_fast") \
        else dict(family="bert")
    raw = read_raw(_write(tmp_path, hidden_act=act, **fields))
    ir, _ = compile_ir(from_raw(raw, seq_len=12), "all")
    spec = spec_for_ir(ir)
    export_onnx(build_module(ir), spec, tmp_path / "model.onnx")
    check_onnx(tmp_path / "model.onnx", spec)  # standard ONNX domain only, opset >= 17
    feeds = realistic_inputs(5, 12, SMALL["vocab"], seed=1)
    (logits,) = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)
    ref = reference.forward(raw, feeds["input_ids"], feeds["attention_mask"], feeds["token_type_ids"], seq_len=12,
                            dtype=torch.float64).numpy()
    np.testing.assert_allclose(logits, ref, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------------------------
# F20 in docs/field-faults.md: example and validation inputs stay inside every embedding table; runners refuse out-of-range segment ids
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("type_vocab", [1, 2, 3])
@pytest.mark.parametrize("batch,seq,vocab", [(7, 16, 1024), (2, 5, 110), (12, 64, 30522)])
def test_f20_realistic_inputs_stay_inside_the_tables(batch, seq, vocab, type_vocab):
    from prumux_compile.export.inputs import realistic_inputs

    f = realistic_inputs(batch, seq, vocab, seed=4, type_vocab_size=type_vocab)
    assert f["input_ids"].min() >= 0 and f["input_ids"].max() < vocab
    assert f["token_type_ids"].min() == 0 and f["token_type_ids"].max() <= min(type_vocab, 2) - 1
    if batch >= 7:  # there are sentence pairs: their second segment uses type 1 where the table has it
        assert f["token_type_ids"].max() == min(type_vocab, 2) - 1
    # the same rows otherwise: only the segment ids depend on the table
    two = realistic_inputs(batch, seq, vocab, seed=4, type_vocab_size=2)
    assert np.array_equal(f["input_ids"], two["input_ids"]) and np.array_equal(f["attention_mask"],
                                                                              two["attention_mask"])


F20_TABLES = [
    # (id, SynthSpec fields): N = 1 families use the token types; one muxed family ignores them (upstream Q3 in docs/checkpoint-formats.md)
    ("bert-1-type", dict(family="bert", type_vocab_size=1)),
    ("cofi-compressed-1-type", dict(family="cofi_compressed", type_vocab_size=1, heads_kept=[[0], [1]])),
    ("cofi-masked-3-types", dict(family="cofi_masked", type_vocab_size=3)),
    ("bert-2-types", dict(family="bert")),
]


@pytest.mark.parametrize("fields", [c[1] for c in F20_TABLES], ids=[c[0] for c in F20_TABLES])
def test_f20_export_validate_and_refuse(tmp_path, one_torch_thread, fields):
    from prumux_compile.engines import registry
    from prumux_compile.engines.base import EngineConfig
    from prumux_compile.errors import InputError
    from prumux_compile.export.inputs import realistic_inputs
    from prumux_compile.export.onnx_export import export_onnx, read_metadata
    from prumux_compile.export.spec import ExportSpec, spec_for_ir
    from prumux_compile.validation import criteria_for, validate

    raw = read_raw(_write(tmp_path, **fields))
    t = fields.get("type_vocab_size", 2)
    ir, _ = compile_ir(from_raw(raw), "all")
    spec = spec_for_ir(ir)
    assert spec.type_vocab_size == t
    export_onnx(build_module(ir), spec, tmp_path / "model.onnx")  # the example inputs fit the table
    assert ExportSpec.from_metadata(read_metadata(tmp_path / "model.onnx")).type_vocab_size == t
    backend = registry.get("ort-cpu")
    art = backend.build(tmp_path / "model.onnx", EngineConfig(threads=1, bench_rounds=1, bench_warmup=0,
                                                             options={"optimize": False, "prefer": "plain"}))
    with backend.load(art) as runner:
        results = validate({"model.onnx": runner}, raw, spec, criteria_for("ort-cpu", "fp32"))
        assert results["model.onnx"].passed
        feeds = realistic_inputs(3, 9, SMALL["vocab"], seed=0, type_vocab_size=t)
        ok = runner.run(feeds)["logits"]
        ref = reference.forward(raw, feeds["input_ids"], feeds["attention_mask"], feeds["token_type_ids"])
        np.testing.assert_allclose(ok, ref.numpy(), atol=1e-5, rtol=0)
        for bad in (t, t + 1, 7):
            f = dict(feeds, token_type_ids=np.where(feeds["attention_mask"] > 0, 0, 0) + (np.arange(9) == 4) * bad)
            with pytest.raises(InputError) as err:
                runner.run(f)
            assert f"token-type table of {t} row(s)" in str(err.value) and f"segment id {bad}" in str(err.value)
            assert err.value.exit_code == 2


def test_f20_muxed_models_ignore_segment_ids_as_upstream(tmp_path, one_torch_thread):
    from prumux_compile.engines import registry
    from prumux_compile.engines.base import EngineConfig
    from prumux_compile.export.inputs import realistic_inputs
    from prumux_compile.export.onnx_export import export_onnx
    from prumux_compile.export.spec import spec_for_ir

    raw = read_raw(_write(tmp_path, family="prumux_compressed", num_instances=2, type_vocab_size=1))
    ir, _ = compile_ir(from_raw(raw, seq_len=12), "all")
    spec = spec_for_ir(ir)
    assert spec.type_vocab_size == 1 and "token_type_ids" in spec.ignored_inputs
    export_onnx(build_module(ir), spec, tmp_path / "model.onnx")
    backend = registry.get("ort-cpu")
    art = backend.build(tmp_path / "model.onnx", EngineConfig(threads=1, bench_rounds=1, bench_warmup=0,
                                                             options={"optimize": False, "prefer": "plain"}))
    feeds = realistic_inputs(5, 12, SMALL["vocab"], seed=0, type_vocab_size=2)  # has segment id 1
    with backend.load(art) as runner:
        got = runner.run(feeds)["logits"]
    np.testing.assert_allclose(got, reference.forward(raw, feeds["input_ids"], seq_len=12).numpy(), atol=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# F26 in docs/field-faults.md: models past the 2 GiB protobuf limit are saved with external data, and every later step carries it along.
# The threshold is lowered so that tiny models take that path.
# ------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def external_everything(monkeypatch):
    import prumux_compile.export.onnx_export as ox

    assert ox.EXTERNAL_DATA_THRESHOLD == 2**31 - 2**28  # 1.75 GiB: the real limit minus room for the graph
    monkeypatch.setattr(ox, "EXTERNAL_DATA_THRESHOLD", 1)


F26_CASES = [
    ("bert", dict(family="bert")),
    ("cofi-compressed", dict(family="cofi_compressed", heads_kept=[[0, 1], [1]])),
    ("prumux-compressed-n2", dict(family="prumux_compressed", num_instances=2, ffn_kept=[list(range(9)), []])),
    ("muxplm-index-n3", dict(family="muxplm", num_instances=3, demuxing_variant="index")),
]


@pytest.mark.parametrize("fields", [c[1] for c in F26_CASES], ids=[c[0] for c in F26_CASES])
def test_f26_external_data_through_export_engine_validation_and_triton(tmp_path, one_torch_thread,
                                                                       external_everything, fields):
    import onnx
    import onnxruntime as ort

    from prumux_compile.engines import registry
    from prumux_compile.engines.base import EngineConfig
    from prumux_compile.export.inputs import realistic_inputs
    from prumux_compile.export.onnx_export import check_onnx, export_onnx, onnx_data_files, read_metadata
    from prumux_compile.export.spec import spec_for_ir
    from prumux_compile.validation import criteria_for, validate
    from prumux_compile.triton import write_repository

    raw = read_raw(_write(tmp_path, "ckpt", **fields))
    ir, _ = compile_ir(from_raw(raw, seq_len=12), "all")
    spec = spec_for_ir(ir)
    out = tmp_path / "out"
    out.mkdir()
    info = export_onnx(build_module(ir), spec, out / "model.onnx")
    assert info["external_data"] == "model.onnx.data"
    data = out / "model.onnx.data"
    weights = sum(p.numel() * 4 for p in build_module(ir).parameters())
    assert data.stat().st_size >= 0.9 * weights
    stored = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in stored.graph.initializer
               if np.prod(t.dims) * 4 >= 1024)  # small shape tensors stay in the graph
    assert onnx_data_files(out / "model.onnx") == [data]
    check_onnx(out / "model.onnx", spec)
    assert read_metadata(out / "model.onnx")["prumux.family"] == raw.family
    # the engine build writes the fused graph with ITS OWN data file; both graphs validate against the reference
    backend = registry.get("ort-cpu")
    art = backend.build(out / "model.onnx", EngineConfig(threads=1, bench_rounds=1, bench_warmup=0))
    assert set(art.files) == {"plain", "fused", "optimized"}
    assert onnx_data_files(out / "model.ort.onnx") == [out / "model.ort.onnx.data"]
    assert onnx_data_files(out / "model.optimized.onnx") == [out / "model.optimized.onnx.data"]
    runners = {role: backend.load(art.using(role)) for role in art.files}
    try:
        results = validate(runners, raw, spec, criteria_for("ort-cpu", "fp32"))
        assert all(r.passed for r in results.values()), {k: v.max_abs_diff for k, v in results.items()}
    finally:
        for r in runners.values():
            r.close()
    # the Triton repository receives the data file beside model.onnx, and ONNX Runtime loads the copy
    repo = tmp_path / "repo"
    write_repository(repo, name="m", model_path=art.path, num_instances=spec.num_instances)
    version = repo / "m" / "1"
    copied = sorted(p.name for p in version.iterdir())
    assert "model.onnx" in copied and Path(art.path).name + ".data" in copied
    feeds = realistic_inputs(5, 12, SMALL["vocab"], seed=3, type_vocab_size=spec.type_vocab_size)
    sess = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    (logits,) = sess.run(None, {k: v for k, v in feeds.items() if k in names})
    ref = reference.forward(raw, feeds["input_ids"], feeds["attention_mask"], feeds["token_type_ids"], seq_len=12)
    np.testing.assert_allclose(logits, ref.numpy(), atol=1e-4, rtol=0)


def test_f26_default_threshold_keeps_small_models_self_contained(tmp_path, one_torch_thread):
    from prumux_compile.export.onnx_export import export_onnx, onnx_data_files
    from prumux_compile.export.spec import spec_for_ir

    raw = read_raw(_write(tmp_path, family="bert"))
    ir, _ = compile_ir(from_raw(raw), "all")
    info = export_onnx(build_module(ir), spec_for_ir(ir), tmp_path / "model.onnx")
    assert info["external_data"] is None and onnx_data_files(tmp_path / "model.onnx") == []
    assert not (tmp_path / "model.onnx.data").exists()


def test_f26_resave_replaces_the_data_file_and_a_missing_one_is_named(tmp_path, one_torch_thread,
                                                                       external_everything):
    from prumux_compile.errors import InputError
    from prumux_compile.export.onnx_export import copy_onnx, export_onnx, onnx_data_files
    from prumux_compile.export.spec import spec_for_ir

    raw = read_raw(_write(tmp_path, family="bert"))
    ir, _ = compile_ir(from_raw(raw), "all")
    spec = spec_for_ir(ir)
    export_onnx(build_module(ir), spec, tmp_path / "model.onnx")
    size = (tmp_path / "model.onnx.data").stat().st_size
    export_onnx(build_module(ir), spec, tmp_path / "model.onnx")  # again, over the old files
    assert (tmp_path / "model.onnx.data").stat().st_size == size  # replaced, not appended to
    (tmp_path / "copy").mkdir()
    written = copy_onnx(tmp_path / "model.onnx", tmp_path / "copy" / "renamed.onnx")
    assert [p.name for p in written] == ["renamed.onnx", "model.onnx.data"]
    assert onnx_data_files(tmp_path / "copy" / "renamed.onnx") == [tmp_path / "copy" / "model.onnx.data"]
    (tmp_path / "model.onnx.data").unlink()
    with pytest.raises(InputError, match="external data file model.onnx.data is missing"):
        onnx_data_files(tmp_path / "model.onnx")


# ------------------------------------------------------------------------------------------------------------------
# inspect: "before" is the unpruned geometry of config.json, also for a compressed checkpoint
# ------------------------------------------------------------------------------------------------------------------
UNPRUNED = [
    ("bert", dict(family="bert")),
    ("muxplm-index-pos", dict(family="muxplm", num_instances=2)),
    ("muxplm-index", dict(family="muxplm", num_instances=3, demuxing_variant="index")),
    ("muxplm-mlp-ortho", dict(family="muxplm", num_instances=2, demuxing_variant="mlp",
                              muxing_variant="random_ortho")),
    ("muxplm-legacy", dict(family="muxplm", num_instances=2, legacy_demuxing=True)),
    ("muxplm-kd4", dict(family="muxplm", num_instances=2, num_hidden_demux_layers=4)),
    ("prumux-masked", dict(family="prumux_masked", num_instances=2, hidden_kept=list(range(9)))),
    ("cofi-masked", dict(family="cofi_masked", heads_kept=[[0], []])),
]


@pytest.mark.parametrize("fields", [c[1] for c in UNPRUNED], ids=[c[0] for c in UNPRUNED])
def test_unpruned_geometry_formula_equals_a_loaded_full_model(tmp_path, fields):
    from prumux_compile.report.stats import flops_per_sequence, unpruned_flops_per_sequence, unpruned_params

    ir = from_raw(read_raw(_write(tmp_path, **fields)), seq_len=16)
    ir.masks = None  # the full model as stored
    assert unpruned_params(ir) == {"total": ir.total_params(), "encoder": ir.encoder_params()}
    assert unpruned_flops_per_sequence(ir) == pytest.approx(flops_per_sequence(ir), rel=1e-12)


TWINS = [
    ("prumux", "prumux_masked", "prumux_compressed", dict(num_instances=2, heads_kept=[[0], []],
                                                          ffn_kept=[list(range(5)), list(range(24))],
                                                          hidden_kept=list(range(12)))),
    ("prumux-index", "prumux_masked", "prumux_compressed", dict(num_instances=3, demuxing_variant="index",
                                                                heads_kept=[[1], [0, 1]], ffn_kept=[[], [3]])),
    ("cofi", "cofi_masked", "cofi_compressed", dict(heads_kept=[[1], [0]], ffn_kept=[[2, 3], []],
                                                    hidden_kept=list(range(2, 16)))),
]


@pytest.mark.parametrize("masked,compressed,fields", [c[1:] for c in TWINS], ids=[c[0] for c in TWINS])
def test_inspect_before_is_the_unpruned_model_for_compressed_checkpoints(tmp_path, masked, compressed, fields):
    from click.testing import CliRunner

    from prumux_compile.cli.main import cli

    fields = {**fields, "max_pos": 140}
    out = {}
    for fam in (masked, compressed):
        res = CliRunner().invoke(cli, ["inspect", "--json", str(_write(tmp_path, fam, family=fam, **fields))])
        assert res.exit_code == 0, res.output
        out[fam] = json.loads(res.output)
    m, c = out[masked], out[compressed]
    for key in ("params", "encoder_params", "flops_per_sequence"):
        assert c[key]["before"] == pytest.approx(m[key]["before"], rel=1e-12), key  # the same unpruned model
        assert c[key]["after"] == pytest.approx(m[key]["after"], rel=1e-12), key  # the same compiled model
        assert c[key]["before"] > c[key]["after"], key
    assert m["stored"]["params"] == m["params"]["before"]  # a masked checkpoint stores the full model
    assert c["stored"]["params"] < c["params"]["before"]  # a compressed one is already pruned
    assert c["geometry"]["before"] == {"layers": 2, "hidden": 16, "heads": 4, "ffn": 48}
    assert c["geometry"]["after"]["hidden"] == len(fields.get("hidden_kept", range(16)))
    text = CliRunner().invoke(cli, ["inspect", str(tmp_path / compressed)]).output
    assert "unpruned (config.json) -> compiled: 2 -> " in text and "(already pruned)" in text
    assert f"params: {c['params']['before']:,} -> {c['params']['after']:,}" in text


@pytest.mark.parametrize("act", ["relu", "quick_gelu", "gelu_new", "mish"])
@pytest.mark.parametrize("fields", [dict(family="bert"), dict(family="prumux_compressed", num_instances=2,
                                                               ffn_kept=[list(range(7)), list(range(24))])],
                         ids=["bert", "prumux"])
def test_f22_cuda_compact_model_honours_the_activation(tmp_path, one_torch_thread, fields, act):
    """The CUDA engine's own model, run on the CPU (fp32, torch kernels, math attention)."""
    from prumux_compile.engines.torch_cuda import compile_for_cuda, engine_model
    from tests.conftest import make_inputs

    raw = read_raw(_write(tmp_path, hidden_act=act, **fields))
    ir, _ = compile_for_cuda(from_raw(raw, seq_len=16), align=None)
    model = engine_model(ir, "fp32", attention="math")
    ids, mask, tt = make_inputs(4, 10, SMALL["vocab"], seed=6)
    with torch.no_grad():
        got = model(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(tt))
    torch.testing.assert_close(got, reference.forward(raw, ids, mask, tt, seq_len=16), atol=1e-5, rtol=0)
