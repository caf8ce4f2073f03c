"""Bad checkpoints: a clear one-line error naming the file, exit code 2, nothing written (inspect and load)."""
from __future__ import annotations

import json
import pickle

import pytest
import torch
from click.testing import CliRunner

from prumux_compile.cli.main import cli

BASE = dict(vocab=1024, max_pos=64, num_layers=2, hidden=32, heads=4, ffn=48)


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def _edit_weights(path, fn):
    sd = torch.load(path / "pytorch_model.bin", weights_only=True)
    fn(sd)
    torch.save(sd, path / "pytorch_model.bin")


def _edit_zs(path, fn):
    zs = torch.load(path / "zs.pt", weights_only=True)
    fn(zs)
    torch.save(zs, path / "zs.pt")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def _truncate(path):
    data = (path / "pytorch_model.bin").read_bytes()
    (path / "pytorch_model.bin").write_bytes(data[: len(data) // 2])


def _nan(sd):
    sd["bert.encoder.layer.1.intermediate.dense.weight"][3, 4] = float("nan")


def _bad_qkv(sd):
    p = "bert.encoder.layer.0.attention."
    for k in ("self.query", "self.key", "self.value"):
        sd[p + k + ".weight"] = sd[p + k + ".weight"][:-3]
        sd[p + k + ".bias"] = sd[p + k + ".bias"][:-3]
    sd[p + "output.dense.weight"] = sd[p + "output.dense.weight"][:, :-3]


# (id, family, corruption, text expected in the error)
CASES = [
    ("missing-config", "bert", lambda p: (p / "config.json").unlink(), "config.json"),
    ("missing-weights", "bert", lambda p: (p / "pytorch_model.bin").unlink(), "no weights file"),
    ("truncated-weights", "bert", _truncate, "truncated"),
    ("nan-weights", "bert", lambda p: _edit_weights(p, _nan), "NaN"),
    ("pickle-needs-code", "bert", lambda p: (p / "pytorch_model.bin").write_bytes(pickle.dumps({"x": _Evil()})),
     "pytorch_model.bin"),
    ("unknown-mux", "muxplm", lambda p: _edit_config(p, muxing_variant="gaussian_attention_v2"), "gaussian_hadamard"),
    ("unknown-demux", "muxplm", lambda p: _edit_config(p, demuxing_variant="mean"), "index_pos"),
    ("mask-wrong-shape", "prumux_masked", lambda p: _edit_zs(p, lambda z: z.update(hidden_z=torch.ones(31))),
     "hidden_z"),
    ("qkv-not-multiple-of-head", "cofi_compressed", lambda p: _edit_weights(p, _bad_qkv), "head size"),
    ("only-l0-module", "prumux_masked", lambda p: ((p / "zs.pt").rename(p / "l0_module.pt")), "l0_module.pt"),
    ("not-a-directory", "bert", lambda p: None, "not a directory"),
    ("hidden-z-keeps-nothing", "prumux_masked",
     lambda p: _edit_zs(p, lambda z: z.update(hidden_z=torch.zeros(32))), "keeps no hidden dim"),
    ("zero-heads-in-config", "bert", lambda p: _edit_config(p, num_attention_heads=0), "num_attention_heads"),
    ("one-demux-layer", "muxplm", lambda p: _edit_config(p, num_hidden_demux_layers=1), "num_hidden_demux_layers"),
]


@pytest.mark.parametrize("case_id,family,corrupt,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_checkpoint_inspect(case_id, family, corrupt, expected, synth_ckpt, tmp_path):
    extra = {"heads_kept": [[0, 1], [2]]} if family == "cofi_compressed" else {}
    path = synth_ckpt(case_id, family=family, num_instances=2, **BASE, **extra)
    corrupt(path)
    target = path / "config.json" if case_id == "not-a-directory" else path
    before = sorted(p.name for p in tmp_path.rglob("*"))
    res = CliRunner().invoke(cli, ["inspect", str(target)])
    assert res.exit_code == 2, res.output
    lines = [l for l in res.output.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert expected in lines[0]
    assert "pwned" not in res.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
