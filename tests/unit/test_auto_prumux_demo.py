"""benchmarks/auto_prumux_demo.py on a hand-made report: the teacher is the N = 1, s = 0 fp32 candidate, every
precision competes in the selection, the meta-model and the held-out check see the fp32 surface only, and the
targets are computed from the measured accuracies."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "auto_prumux_demo.py"


@pytest.fixture(scope="module")
def demo_bench():
    spec = importlib.util.spec_from_file_location("auto_prumux_demo", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cand(cid, n, s, prec, acc, thr, eager):
    backend = "openvino" if prec == "bf16" else "ort-cpu"
    return {"id": cid, "num_instances": n, "sparsity": s, "backend": backend, "precision": prec,
            "accuracy": acc, "throughput": thr, "eager_throughput": eager, "speedup_vs_eager": thr / eager}


ROWS = [  # (checkpoint, N, s, precision, accuracy, seq/s, eager seq/s of the same checkpoint)
    ("n1_s0.00", 1, 0.0, "fp32", 0.80, 100.0, 80.0),
    ("n1_s0.00", 1, 0.0, "int8", 0.795, 250.0, 80.0),
    ("n1_s0.00", 1, 0.0, "bf16", 0.70, 400.0, 80.0),
    ("n1_s0.50", 1, 0.5, "fp32", 0.76, 180.0, 120.0),
    ("n1_s0.80", 1, 0.8, "fp32", 0.65, 300.0, 200.0),
    ("n2_s0.00", 2, 0.0, "fp32", 0.55, 190.0, 150.0),
    ("n2_s0.50", 2, 0.5, "fp32", 0.53, 330.0, 230.0),
    ("n2_s0.50_masked", 2, 0.5, "fp32", 0.53, 320.0, 100.0),
    ("n5_s0.00", 5, 0.0, "fp32", 0.50, 450.0, 350.0),
]


def _report():
    tags = {"fp32": "ort-cpu.fp32", "int8": "ort-cpu.int8", "bf16": "openvino.bf16"}
    return {"candidates": [_cand(f"{c}@{tags[p]}", n, s, p, a, t, e) for c, n, s, p, a, t, e in ROWS]}


def test_table_budgets_fit_and_targets(demo_bench):
    res = demo_bench.analyse(_report(), [0.01, 0.05, 0.10], "n2_s0.50")
    assert res["teacher"] == "n1_s0.00@ort-cpu.fp32"
    row = {r["id"]: r for r in res["table"]}
    assert row["n1_s0.50@ort-cpu.fp32"]["speedup_vs_teacher"] == pytest.approx(1.8)
    assert row["n1_s0.50@ort-cpu.fp32"]["speedup_vs_eager_teacher"] == pytest.approx(180.0 / 80.0)
    chosen = {b["max_accuracy_drop"]: b["chosen"] for b in res["budgets"]}
    # 0.01: floor 0.79 -> the int8 teacher (250 seq/s) beats the fp32 one; 0.05: floor 0.75 -> still int8 (the
    # pruned s=0.5 is slower); 0.10: floor 0.70 -> the bf16 teacher at 400 seq/s
    assert chosen == {0.01: "n1_s0.00@ort-cpu.int8", 0.05: "n1_s0.00@ort-cpu.int8", 0.10: "n1_s0.00@openvino.bf16"}
    w = res["withheld"]
    assert w["id"] == "n2_s0.50@ort-cpu.fp32" and w["measured_accuracy"] == 0.53
    # fitted on the fp32 surface without the masked twin and without the withheld point
    assert sorted(w["fitted_on"]) == ["n1_s0.00@ort-cpu.fp32", "n1_s0.50@ort-cpu.fp32", "n1_s0.80@ort-cpu.fp32",
                                      "n2_s0.00@ort-cpu.fp32", "n5_s0.00@ort-cpu.fp32"]
    assert w["accuracy_error"] == pytest.approx(abs(w["predicted_accuracy"] - 0.53))
    targets = {t["target"]: (t["value"], t["met"]) for t in res["targets"]}
    assert targets["teacher accuracy >= 0.80"] == (0.80, True)
    assert targets["N=2 within 3 points of the teacher"][0] == pytest.approx(0.55 - 0.80)
    assert targets["N=2 within 3 points of the teacher"][1] is False
    assert targets["N=1 s=0.5 within 2 points of N=1 s=0"][0] == pytest.approx(-0.04)
    assert targets["budget 0.05 picks a multiplexed or pruned candidate faster than the teacher"] == \
        ("n1_s0.00@ort-cpu.int8", False)


def test_unknown_withheld_configuration(demo_bench):
    with pytest.raises(SystemExit, match="--withhold n3_s0.50: no such candidate"):
        demo_bench.analyse(_report(), [0.05], "n3_s0.50")


def test_demultiplexing_separates_same_and_mixed_label_groups(demo_bench, tmp_path):
    """Groups are rows g·N .. g·N+N-1 of the evaluation file; expected values counted by hand."""
    import numpy as np

    report = _report()
    cid = "n2_s0.00@ort-cpu.fp32"
    (tmp_path / "candidates" / cid).mkdir(parents=True)
    labels = np.array([0, 0, 1, 1, 0, 1, 1, 0, 1])  # groups: (0,0) (1,1) (0,1) (1,0); the 9th row has no group
    pred = np.array([0, 0, 1, 0, 1, 1, 1, 1, 0])  # same-label groups: 3 of 4 right; mixed: 2 of 4
    logits = np.stack([1.0 - pred, pred.astype(float)], axis=1).astype(np.float32)
    np.savez(tmp_path / "candidates" / cid / "predictions.npz", logits=logits, labels=labels)
    res = demo_bench.analyse(report, [0.05], "n2_s0.50", tmp_path)
    (d,) = res["demultiplexing"]  # the other multiplexed candidates have no predictions.npz here
    assert d["id"] == cid and d["groups"] == 4 and d["same_label_groups"] == 2
    assert d["accuracy_same_label_groups"] == pytest.approx(0.75)
    assert d["accuracy_mixed_label_groups"] == pytest.approx(0.5)
    assert d["groups_given_one_label"] == pytest.approx(0.75)  # predictions (0,0) (1,1) (1,1) are one label, (1,0) is not
    assert demo_bench.analyse(report, [0.05], "n2_s0.50")["demultiplexing"] == []
