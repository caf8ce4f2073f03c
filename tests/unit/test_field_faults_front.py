"""Field faults F20–F22, F25, F26, F28 (docs/fault-classes.md), front end: checkpoint reading, config fields,
reference and kernels, example inputs, feeds, external-data export. Each kind is a table of several instances."""
from __future__ import annotations

import json

import pytest
import torch

from prumux_compile.checkpoint import read_raw
from prumux_compile.errors import CheckpointError
from prumux_compile.synthetic import SynthSpec, break_file, write_checkpoint

SMALL = dict(vocab=256, max_pos=40, num_layers=2, hidden=16, heads=2, ffn=24)


def _write(tmp_path, name="ckpt", **fields):
    fields = {**SMALL, **fields}
    write_checkpoint(tmp_path / name, SynthSpec(**fields))
    return tmp_path / name


# ------------------------------------------------------------------------------------------------------------------
# F28: a weights file that is not a checkpoint is named for what it is
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
    from prumux_compile.synthetic import _CallsPrint

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
# F25: sharded checkpoints (safetensors and .bin, with their index files); hashes cover every shard
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
]


@pytest.mark.parametrize("corrupt,expected", [c[1:] for c in F25_BAD], ids=[c[0] for c in F25_BAD])
def test_f25_bad_shards(tmp_path, corrupt, expected):
    path = _shard_dir(tmp_path)
    corrupt(path)
    with pytest.raises(CheckpointError) as err:
        read_raw(path)
    assert expected in str(err.value)


# ------------------------------------------------------------------------------------------------------------------
# F21: uniform wrapper prefixes are removed; a bare encoder gets "no classifier head"; errors list the first keys
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
