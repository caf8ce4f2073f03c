"""Field faults at the command line: ``inspect`` on each kind of bad checkpoint exits 2 with one error line that
names the problem (F21, F22, F25, F28; docs/field-faults.md), and good instances of each kind are accepted."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from prumux_compile.cli.main import cli
from prumux_compile.demo.synthetic import SynthSpec, write_checkpoint

BASE = dict(vocab=256, max_pos=140, num_layers=2, hidden=16, heads=2, ffn=24)


def _ckpt(tmp_path, name="ckpt", edit=None, **fields):
    path = tmp_path / name
    write_checkpoint(path, SynthSpec(**{**BASE, **fields}))
    if edit is not None:
        edit(path)
    return path


def _bare(path):
    sd = torch.load(path / "pytorch_model.bin", weights_only=True)
    torch.save({k[len("module.bert."):]: v for k, v in sd.items() if k.startswith("module.bert.")},
               path / "pytorch_model.bin")


def _mlm_head(path):
    sd = torch.load(path / "pytorch_model.bin", weights_only=True)
    torch.save({**sd, "cls.predictions.bias": torch.zeros(256)}, path / "pytorch_model.bin")


# (id, SynthSpec fields, edit after writing, text expected in the one error line); F-numbers: docs/field-faults.md
BAD = [
    ("F28-lfs-pointer",  # docs/field-faults.md
     dict(family="bert", broken_file="lfs-pointer"), None, "a Git LFS pointer"),
    ("F28-empty-zs",  # docs/field-faults.md
     dict(family="cofi_masked", broken_file="empty", broken_target="zs"), None, "empty (0 bytes)"),
    ("F28-text", dict(family="bert", broken_file="text"), None, "a text file"),  # docs/field-faults.md
    ("F28-random-shard",  # docs/field-faults.md
     dict(family="bert", shards=2, broken_file="random"), None, "not a PyTorch file"),
    ("F25-missing-shard", dict(family="muxplm", shards=3, safetensors=True),  # docs/field-faults.md
     lambda p: (p / "model-00003-of-00003.safetensors").unlink(), "model-00003-of-00003.safetensors"),
    ("F21-bare-encoder-module",  # docs/field-faults.md
     dict(family="bert", key_prefix="module."), _bare, "no classifier head"),
    ("F25-single-beside-index", dict(family="bert", shards=2),  # docs/field-faults.md
     lambda p: torch.save({}, p / "pytorch_model.bin"),
     "both a single weights file (pytorch_model.bin) and a sharded checkpoint's index (pytorch_model.bin.index.json)"),
    ("F22-hidden-act",  # docs/field-faults.md
     dict(family="prumux_compressed", num_instances=2, config_overrides={"hidden_act": "laplace"}),
     None, "config.json hidden_act='laplace'"),
    ("F22-relative-positions",  # docs/field-faults.md
     dict(family="bert", config_overrides={"position_embedding_type": "relative_key"}),
     None, "config.json position_embedding_type='relative_key'"),
    ("F22-unread-mlm-head", dict(family="cofi_compressed", heads_kept=[[0], [1]]), _mlm_head,  # docs/field-faults.md
     "1 tensor(s) that nothing reads: cls.predictions.bias"),
]


@pytest.mark.parametrize("fields,edit,expected", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_kind_exits_2_with_one_line(tmp_path, fields, edit, expected):
    path = _ckpt(tmp_path, edit=edit, **fields)
    res = CliRunner().invoke(cli, ["inspect", str(path)])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert expected in lines[0]
    assert "Traceback" not in res.output


GOOD = [
    ("F25-sharded-bin",  # docs/field-faults.md
     dict(family="prumux_compressed", num_instances=2, shards=3, heads_kept=[[0], [0, 1]])),
    ("F21-module-prefix",  # docs/field-faults.md
     dict(family="cofi_compressed", key_prefix="module.", ffn_kept=[[1, 2], []])),
    ("F22-relu-sharded", dict(family="muxplm", num_instances=2, hidden_act="relu", shards=2)),  # docs/field-faults.md
]


@pytest.mark.parametrize("fields", [c[1] for c in GOOD], ids=[c[0] for c in GOOD])
def test_good_instances_of_the_kinds_inspect(tmp_path, fields):
    plain = _ckpt(tmp_path, "plain", **{**fields, "shards": 0, "key_prefix": ""})
    path = _ckpt(tmp_path, **fields)
    want = json.loads(CliRunner().invoke(cli, ["inspect", "--json", str(plain)]).output)
    res = CliRunner().invoke(cli, ["inspect", "--json", str(path)])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    for key in ("family", "num_instances", "layers", "params", "flops_per_sequence", "sparsity"):
        assert got[key] == want[key], key


@pytest.fixture
def external_everything(monkeypatch):
    import prumux_compile.export.onnx_export as ox

    monkeypatch.setattr(ox, "EXTERNAL_DATA_THRESHOLD", 1)  # tiny models take the > 2 GiB path (F26 in docs/field-faults.md)


def test_f26_export_command_carries_external_data(tmp_path, one_torch_thread, external_everything):
    ckpt = _ckpt(tmp_path, family="prumux_compressed", num_instances=2, heads_kept=[[0, 1], [1]])
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(out), "--seq-len", "16", "--threads", "1"])
    assert res.exit_code == 0, res.output
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "model.onnx.data", "model.ort.onnx", "model.ort.onnx.data"} <= names
    assert json.loads((out / "validation.json").read_text())["passed"] is True


def test_f26_build_cache_and_repository_carry_external_data(tmp_path, one_torch_thread, external_everything):
    ckpt = _ckpt(tmp_path, family="muxplm", num_instances=2, vocab=30522)
    fast = ["--seq-len", "16", "--batch-sizes", "4", "--rounds", "1", "--warmup", "0", "--threads", "1", "--precision", "fp32",
            "--min-accuracy", "0.0", "--no-progress", "--cache-dir", str(tmp_path / "cache"), "--precision", "fp32"]
    for run in ("first", "cached"):
        out = tmp_path / run
        res = CliRunner().invoke(cli, ["build", str(ckpt), "-o", str(out), *fast])
        assert res.exit_code == 0, res.output
        report = json.loads((out / "report.json").read_text())
        (cand,) = report["candidates"]
        assert cand["cached"] is (run == "cached") and cand["validation"]["passed"]
        d = out / "candidates" / cand["id"]
        assert (d / "model.onnx.data").is_file() and (d / "model.ort.onnx.data").is_file()
        version = out / report["model_repository"] / "1"
        assert any(p.name.endswith(".onnx.data") for p in version.iterdir()), sorted(version.iterdir())


def test_f26_external_data_is_covered_by_the_artifact_hashes(tmp_path, one_torch_thread, external_everything):
    """Finding 15: past the protobuf limit the weights live in ``model.optimized.onnx.data``; candidate.json hashes
    it beside the graph, a cache entry whose data file changed is rebuilt, and triton refuses a changed data file."""
    import hashlib
    import shutil

    def sha(p):
        return hashlib.sha256(p.read_bytes()).hexdigest()

    ckpt = _ckpt(tmp_path, family="muxplm", num_instances=2, vocab=30522)
    other = _ckpt(tmp_path, "other", family="muxplm", num_instances=2, vocab=30522, seed=7)
    cache = tmp_path / "cache"
    fast = ["--seq-len", "16", "--batch-sizes", "4", "--rounds", "1", "--warmup", "0", "--threads", "1", "--precision", "fp32",
            "--min-accuracy", "0.0", "--no-progress", "--cache-dir", str(cache)]

    def build(src, out):
        res = CliRunner().invoke(cli, ["build", str(src), "-o", str(tmp_path / out), *fast])
        assert res.exit_code == 0, res.output
        (cand,) = json.loads((tmp_path / out / "report.json").read_text())["candidates"]
        return cand, tmp_path / out / "candidates" / cand["id"]

    cand, d = build(ckpt, "o1")
    art = cand["artifact"]
    assert art["path"] == "model.optimized.onnx"
    assert art["files_sha256"] == {"model.optimized.onnx": sha(d / "model.optimized.onnx"),
                                   "model.optimized.onnx.data": sha(d / "model.optimized.onnx.data")}
    assert art["files_sha256"]["model.optimized.onnx"] == art["sha256"]
    _, d_other = build(other, "o2")

    # the cache entry's data file replaced by another model's (same graph layout): rebuilt, not reused
    entry = next(p for p in cache.iterdir() if (p / "model.optimized.onnx").is_file()
                 and sha(p / "model.optimized.onnx") == art["sha256"])
    shutil.copyfile(d_other / "model.optimized.onnx.data", entry / "model.optimized.onnx.data")
    cand3, d3 = build(ckpt, "o3")
    assert cand3["cached"] is False
    assert sha(d3 / "model.optimized.onnx.data") == art["files_sha256"]["model.optimized.onnx.data"]

    # a candidate folder whose data file changed after it was measured is not served
    shutil.copyfile(d_other / "model.optimized.onnx.data", d / "model.optimized.onnx.data")
    res = CliRunner().invoke(cli, ["triton", str(d), "-o", str(tmp_path / "repo")])
    assert res.exit_code == 2, res.output
    assert "model.optimized.onnx.data: sha256" in res.output and "changed after it was measured" in res.output
    assert not (tmp_path / "repo" / f"prumux_{cand['id']}").exists()
