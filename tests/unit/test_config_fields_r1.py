"""config.json values the loader used to take silently or crash on (a fresh-user review).

* ``id2label`` must name exactly the classifier's outputs 0..C-1: evaluation labels are mapped to class ids
  through it, so a gap ({0, 2, 3} for 3 outputs) scored every example of the class "3" as wrong, a map of another
  size was replaced by LABEL_i without a word, and non-integer keys ended in an internal error (exit 1).
* ``pruned_heads``, ``num_hidden_layers``, ``intermediate_size`` of the wrong type: exit 2 naming the field
  (was exit 1).
* A config.json that is a Git LFS pointer or empty is named for what it is (field fault F28 in docs/field-faults.md), not "invalid JSON".
"""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from prumux_compile.checkpoint import load
from prumux_compile.cli.main import cli
from prumux_compile.errors import CheckpointError
from prumux_compile.demo.synthetic import SynthSpec, write_checkpoint

TINY = dict(vocab=128, max_pos=32, num_layers=1, hidden=16, heads=2, ffn=16, num_labels=3)


def _ckpt(tmp_path, family="bert", **config):
    path = tmp_path / "ckpt"
    n = 2 if family == "prumux_compressed" else 1
    write_checkpoint(path, SynthSpec(family=family, num_instances=n, **TINY, config_overrides=config))
    return path


@pytest.mark.parametrize("family", ["bert", "prumux_compressed"])
@pytest.mark.parametrize("config, words", [
    ({"id2label": {"0": "a", "2": "b", "3": "c"}}, ["keys '0', '2', '3'", "3 output(s)", "0..2"]),
    ({"id2label": {"0": "a", "1": "b"}}, ["keys '0', '1'", "3 output(s)"]),
    ({"id2label": {"0": "a", "1": "b", "2": "c", "3": "d"}}, ["3 output(s)"]),
    ({"id2label": {"neg": "a", "pos": "b", "x": "c"}}, ["keys 'neg', 'pos', 'x'"]),
    ({"id2label": ["a", "b", "c"]}, ["id2label is a list"]),
    ({"pruned_heads": {"zero": [1]}}, ["pruned_heads=", "integer ids"]),
    ({"pruned_heads": {"0": ["one"]}}, ["pruned_heads=", "integer ids"]),
    ({"num_hidden_layers": "x"}, ["num_hidden_layers='x'", "positive integer"]),
    ({"intermediate_size": "16"}, ["intermediate_size='16'", "positive integer"]),
    ({"num_hidden_layers": 0}, ["num_hidden_layers=0"]),
])
def test_config_values_refused_with_the_field(tmp_path, family, config, words):
    path = _ckpt(tmp_path, family, **config)
    with pytest.raises(CheckpointError) as err:
        load(path, seq_len=16)
    for w in words:
        assert w in str(err.value)
    res = CliRunner().invoke(cli, ["inspect", str(path), "--seq-len", "16"])
    assert res.exit_code == 2 and "internal error" not in res.output


@pytest.mark.parametrize("config", [
    {"id2label": {"0": "x", "1": "y", "2": "z"}},
    {"id2label": {0: "x", 2: "z", 1: "y"}},  # any key order
    {"id2label": {}},  # no names: LABEL_i
    {"pruned_heads": {"0": [1], "1": []}},
])
def test_consistent_values_are_accepted(tmp_path, config):
    path = _ckpt(tmp_path, **config)
    names = json.loads((path / "config.json").read_text())["id2label"]
    assert load(path).id2label == ({int(k): v for k, v in names.items()} or {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})


@pytest.mark.parametrize("content, words", [
    ("version https://git-lfs.github.com/spec/v1\noid sha256:" + "a" * 64 + "\nsize 612\n",
     ["config.json: a Git LFS pointer", "git lfs pull"]),
    ("", ["config.json: empty (0 bytes)"]),
])
def test_config_that_is_not_json_is_named(tmp_path, content, words):
    path = _ckpt(tmp_path)
    (path / "config.json").write_text(content)
    res = CliRunner().invoke(cli, ["inspect", str(path)])
    assert res.exit_code == 2
    for w in words:
        assert w in res.output
