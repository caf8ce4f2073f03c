"""Auto-PruMUX over (N, s, precision): the meta-model's precision factor (an accuracy offset and a throughput factor
per precision on top of the (N, s) family), its leave-one-out errors, and the recommendation across precisions."""
from __future__ import annotations

import math

import pytest

from prumux_compile.select import Candidate, SelectInputError, predict, predict_with_precision

GRID = [(1, 0.0), (1, 0.5), (2, 0.0), (2, 0.5), (5, 0.0), (5, 0.5)]


def _acc(n, s):
    return 0.9 - 0.03 * math.log(n) - 0.1 * s


def _thr(n, s):
    return 100.0 * n / (1 - s + 0.01)


def _cands(levels: dict[str, tuple[float, float]], backend="ort-cpu", skip=()):
    """Candidates whose accuracy / throughput follow the family exactly, shifted by (offset, factor) per level."""
    out = []
    for prec, (offset, factor) in levels.items():
        for n, s in GRID:
            if (prec, n, s) in skip:
                continue
            out.append(Candidate(id=f"n{n}_s{s}@{prec}", num_instances=n, sparsity=s, backend=backend,
                                 precision=prec, throughput=_thr(n, s) * factor, accuracy=_acc(n, s) + offset))
    return out


def test_offsets_and_factors_are_recovered():
    pred = predict_with_precision(_cands({"fp32": (0.0, 1.0), "int8": (-0.02, 2.5), "bf16": (-0.005, 1.8)}),
                                  threshold=0.8, nums=(1, 2, 5), sparsities=(0.0, 0.5))
    assert pred.reference == "fp32"
    assert pred.levels["int8"]["accuracy_offset"] == pytest.approx(-0.02, abs=1e-9)
    assert pred.levels["int8"]["throughput_factor"] == pytest.approx(2.5, rel=1e-6)
    assert pred.levels["bf16"]["throughput_factor"] == pytest.approx(1.8, rel=1e-6)
    assert pred.levels["int8"]["loo_mae_accuracy"] == pytest.approx(0.0, abs=1e-9)  # a constant offset: exact
    # the grid covers every level; each level's point is the reference's times its factor / plus its offset
    by = {(g["precision"], g["num_instances"], g["sparsity"]): g for g in pred.grid}
    assert len(pred.grid) == 3 * 3 * 2
    assert by[("int8", 2, 0.5)]["throughput"] == pytest.approx(by[("fp32", 2, 0.5)]["throughput"] * 2.5, rel=1e-6)
    assert by[("int8", 2, 0.5)]["accuracy"] == pytest.approx(by[("fp32", 2, 0.5)]["accuracy"] - 0.02, abs=1e-9)
    # recommendation across precisions: int8 is fastest and, at this threshold, accurate enough
    assert pred.recommended["precision"] == "int8" and pred.recommended["num_instances"] == 5
    d = pred.to_dict()
    assert d["reference_level"] == "fp32" and set(d["precision_factors"]) == {"fp32", "int8", "bf16"}
    assert "accuracy_model" in d and "throughput_model" in d  # the base prediction's fields are kept


def test_the_base_is_the_reference_levels_own_fit():
    cands = _cands({"fp32": (0.0, 1.0), "int8": (-0.02, 2.5)})
    pred = predict_with_precision(cands, threshold=0.8)
    alone = predict([c for c in cands if c.precision == "fp32"], threshold=0.8)
    assert pred.base.to_dict() == alone.to_dict()
    assert pred.levels["fp32"]["loo_mae_accuracy"] == alone.accuracy_model.loo_mae


def test_leave_one_out_of_a_single_point_level_falls_back_to_the_reference():
    """A level with one point: leaving it out leaves no factor, so its LOO error is its whole offset."""
    only = {("int8", n, s) for n, s in GRID if (n, s) != (2, 0.0)}
    pred = predict_with_precision(_cands({"fp32": (0.0, 1.0), "int8": (-0.03, 2.0)}, skip=only), threshold=0.5)
    lv = pred.levels["int8"]
    assert lv["n_points"] == 1 and lv["accuracy_offset"] == pytest.approx(-0.03, abs=1e-9)
    assert lv["loo_mae_accuracy"] == pytest.approx(0.03, abs=1e-6)
    assert lv["loo_mae_throughput"] == pytest.approx(_thr(2, 0.0), rel=1e-6)  # predicted at factor 1: off by T


def test_levels_are_backend_precision_pairs_across_backends():
    cands = _cands({"fp32": (0.0, 1.0), "int8": (-0.01, 2.0)}) + _cands({"bf16": (-0.002, 1.7)}, backend="openvino")
    pred = predict_with_precision(cands, threshold=0.5)
    assert set(pred.levels) == {"ort-cpu/fp32", "ort-cpu/int8", "openvino/bf16"}
    assert pred.reference == "ort-cpu/fp32"
    assert pred.levels["openvino/bf16"]["throughput_factor"] == pytest.approx(1.7, rel=1e-6)
    with pytest.raises(SelectInputError, match="reference level 'gpu/fp16'"):
        predict_with_precision(cands, threshold=0.5, reference="gpu/fp16")
