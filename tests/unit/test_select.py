"""Auto-PruMUX: selection on measured candidates and the (N, s) meta-model.

Expected values are computed here by brute force over synthetic surfaces whose best point is known, never taken
from the code under test.
"""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from prumux_compile.errors import NoCandidateError, PrumuxError
from prumux_compile.select import (
    Candidate,
    SelectInputError,
    pareto_front,
    predict,
    raise_if_none,
    select,
)

NUMS = (1, 2, 4, 8)
SPARSITIES = (0.0, 0.3, 0.5, 0.7, 0.9)


def cand(cid, n, s, thr, acc, **kw):
    return Candidate(id=cid, num_instances=n, sparsity=s, backend="ort", precision="fp32",
                     throughput=thr, accuracy=acc, **kw)


# ------------------------------------------------------------------ selection: synthetic surface, several budgets


def surface_candidates():
    """Accuracy falls with N and s, throughput rises with both; accuracies rounded like real measurements."""
    out = []
    for n, s in itertools.product(NUMS, SPARSITIES):
        acc = round(0.90 - 0.015 * math.log2(n) - 0.12 * s * s, 4)
        thr = 100.0 * n**0.9 / (1.0 - 0.8 * s)
        out.append(cand(f"n{n}-s{s}", n, s, thr, acc))
    return out


def brute_force_best(cands, floor):
    ok = [c for c in cands if c.accuracy is not None and c.accuracy >= floor - 1e-9]
    return max(ok, key=lambda c: c.throughput) if ok else None


def test_surface_has_distinct_throughputs():
    thr = [c.throughput for c in surface_candidates()]
    assert len(set(thr)) == len(thr)  # so brute force has one answer


@pytest.mark.parametrize("drop", [0.0, 0.005, 0.01, 0.03, 0.05, 0.08, 0.12, 0.2, 1.0])
def test_select_max_accuracy_drop_matches_brute_force(drop):
    cands = surface_candidates()
    sel = select(cands, max_accuracy_drop=drop)
    assert sel.baseline.id == "n1-s0.0"
    # a floor below 0 (drop 1.0 from 0.90) is clamped to 0: the same candidates qualify (field fault F23 in docs/field-faults.md)
    assert sel.threshold == pytest.approx(max(0.0, 0.90 - drop))
    assert sel.clamped_from == (None if drop <= 0.90 else pytest.approx(0.90 - drop))
    expected = brute_force_best(cands, 0.90 - drop)
    assert sel.chosen is expected
    assert sel.chosen.id in sel.reason
    assert sel.qualifying[0] is expected
    assert {c.id for c in sel.qualifying} == {c.id for c in cands if c.accuracy >= 0.90 - drop - 1e-9}
    assert sel.nearest == []


@pytest.mark.parametrize("floor", [0.5, 0.8, 0.85, 0.87, 0.885, 0.9])
def test_select_min_accuracy_matches_brute_force(floor):
    cands = surface_candidates()
    sel = select(cands, min_accuracy=floor)
    assert sel.chosen is brute_force_best(cands, floor)
    assert sel.threshold == floor


@pytest.mark.parametrize("drop", [0.01, 0.03, 0.06])
def test_min_accuracy_equals_drop_from_baseline(drop):
    cands = surface_candidates()
    a = select(cands, max_accuracy_drop=drop)
    b = select(cands, min_accuracy=0.90 - drop)
    assert a.chosen is b.chosen
    assert a.budget == {"max_accuracy_drop": drop}
    assert b.budget == {"min_accuracy": 0.90 - drop}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_selection_independent_of_input_order(seed):
    cands = surface_candidates()
    shuffled = [cands[i] for i in np.random.default_rng(seed).permutation(len(cands))]
    a, b = select(cands, max_accuracy_drop=0.04), select(shuffled, max_accuracy_drop=0.04)
    assert a.chosen is b.chosen
    assert [c.id for c in a.qualifying] == [c.id for c in b.qualifying]
    assert a.reason == b.reason


def test_accuracy_exactly_at_floor_qualifies():
    # 0.85 - 0.01 is not exactly 0.84 in binary floating point on every path; it must still qualify.
    cands = [cand("base", 1, 0.0, 10.0, 0.85), cand("edge", 4, 0.5, 50.0, 0.84), cand("below", 8, 0.5, 90.0, 0.8399)]
    assert select(cands, max_accuracy_drop=0.01).chosen.id == "edge"


# ------------------------------------------------------------------ ties


@pytest.mark.parametrize(
    "a, b, winner, word",
    [
        # equal throughput: higher accuracy wins
        (("x", 2, 0.3, 100.0, 0.86), ("y", 2, 0.3, 100.0, 0.87), "y", "higher accuracy"),
        # equal throughput and accuracy: lower N wins
        (("x", 4, 0.0, 100.0, 0.86), ("y", 2, 0.5, 100.0, 0.86), "y", "lower N"),
        # equal throughput, accuracy, N: lower sparsity wins
        (("x", 2, 0.5, 100.0, 0.86), ("y", 2, 0.4, 100.0, 0.86), "y", "lower sparsity"),
        # everything equal: id decides
        (("b", 2, 0.4, 100.0, 0.86), ("a", 2, 0.4, 100.0, 0.86), "a", "id"),
    ],
)
def test_tie_breaks(a, b, winner, word):
    base = cand("base", 1, 0.0, 10.0, 0.90)
    for order in ([base, cand(*a), cand(*b)], [cand(*b), cand(*a), base]):
        sel = select(order, max_accuracy_drop=0.1)
        assert sel.chosen.id == winner
        assert f"broken by {word}" in sel.reason


# ------------------------------------------------------------------ unknown accuracies


def test_unknown_accuracy_never_chosen_and_reported():
    cands = [
        cand("base", 1, 0.0, 10.0, 0.90),
        cand("fast-unknown", 8, 0.9, 1000.0, None),
        cand("ok", 4, 0.5, 60.0, 0.88),
    ]
    sel = select(cands, max_accuracy_drop=0.05)
    assert sel.chosen.id == "ok"
    assert [c.id for c in sel.unknown_accuracy] == ["fast-unknown"]
    assert "unknown accuracy" in sel.reason and "fast-unknown" in sel.reason
    assert all(c.accuracy is not None for c in sel.qualifying)


def test_all_unknown_gives_no_choice():
    cands = [cand("a", 1, 0.0, 10.0, None), cand("b", 2, 0.0, 20.0, None)]
    sel = select(cands, min_accuracy=0.0)
    assert sel.chosen is None and sel.nearest == []
    with pytest.raises(NoCandidateError):
        raise_if_none(sel)


def test_baseline_without_accuracy_rejects_relative_budget():
    cands = [cand("base", 1, 0.0, 10.0, None), cand("x", 2, 0.0, 20.0, 0.8)]
    with pytest.raises(SelectInputError, match="baseline"):
        select(cands, max_accuracy_drop=0.01)
    assert select(cands, min_accuracy=0.7).chosen.id == "x"


# ------------------------------------------------------------------ nothing meets the budget


def test_no_candidate_lists_nearest_and_exits_5():
    cands = surface_candidates() + [cand("unknown", 2, 0.1, 5000.0, None)]
    sel = select(cands, min_accuracy=0.95)
    assert sel.chosen is None and sel.qualifying == []
    known = [c for c in cands if c.accuracy is not None]
    top3 = sorted(known, key=lambda c: (-c.accuracy, -c.throughput))[:3]
    assert [c.id for c in sel.nearest] == [c.id for c in top3]
    with pytest.raises(NoCandidateError) as info:
        raise_if_none(sel)
    assert info.value.exit_code == 5
    message = str(info.value)
    assert "\n" not in message
    for c in top3:
        assert c.id in message
    assert "0.9500" in message


def test_raise_if_none_returns_chosen():
    sel = select(surface_candidates(), max_accuracy_drop=0.02)
    assert raise_if_none(sel) is sel.chosen


def test_fewer_than_three_known_nearest():
    cands = [cand("a", 1, 0.0, 10.0, 0.5), cand("b", 2, 0.0, 20.0, 0.6)]
    sel = select(cands, min_accuracy=0.9)
    assert [c.id for c in sel.nearest] == ["b", "a"]


# ------------------------------------------------------------------ baseline choice


@pytest.mark.parametrize(
    "pool, expected",
    [
        # lowest sparsity among N == 1
        ([("p", 1, 0.3, 20.0, 0.89), ("q", 1, 0.0, 10.0, 0.88), ("r", 2, 0.0, 30.0, 0.95)], "q"),
        # tie on sparsity: highest accuracy
        ([("p", 1, 0.0, 20.0, 0.87), ("q", 1, 0.0, 10.0, 0.88)], "q"),
        # tie on sparsity and accuracy: id
        ([("q", 1, 0.0, 20.0, 0.88), ("p", 1, 0.0, 10.0, 0.88)], "p"),
        # unknown accuracy loses the accuracy tie-break
        ([("a", 1, 0.0, 20.0, None), ("b", 1, 0.0, 10.0, 0.5)], "b"),
    ],
)
def test_baseline_choice(pool, expected):
    sel = select([cand(*p) for p in pool], min_accuracy=0.0)
    assert sel.baseline.id == expected


def test_baseline_id_overrides_and_changes_floor():
    cands = surface_candidates()
    sel = select(cands, max_accuracy_drop=0.01, baseline_id="n2-s0.3")
    base = next(c for c in cands if c.id == "n2-s0.3")
    assert sel.baseline is base
    assert sel.threshold == pytest.approx(base.accuracy - 0.01)
    assert sel.chosen is brute_force_best(cands, base.accuracy - 0.01)


def test_no_single_instance_candidate():
    cands = [cand("m4", 4, 0.0, 40.0, 0.8), cand("m2", 2, 0.2, 30.0, 0.85)]
    with pytest.raises(SelectInputError, match="N=1"):
        select(cands, max_accuracy_drop=0.01)
    sel = select(cands, min_accuracy=0.82)
    assert sel.baseline.id == "m2" and sel.chosen.id == "m2"
    assert select(cands, max_accuracy_drop=0.06, baseline_id="m2").chosen.id == "m4"


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"max_accuracy_drop": 0.01, "min_accuracy": 0.8},
        {"max_accuracy_drop": -0.01},
        {"max_accuracy_drop": float("nan")},
        {"min_accuracy": 1.5},
        {"min_accuracy": 0.8, "baseline_id": "nope"},
    ],
)
def test_bad_budget_is_value_error(kwargs):
    with pytest.raises(ValueError) as info:
        select(surface_candidates(), **kwargs)
    assert isinstance(info.value, PrumuxError) and info.value.exit_code == 2
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "field, value",
    [
        ("id", ""),
        ("num_instances", 0),
        ("num_instances", 2.0),
        ("num_instances", True),
        ("sparsity", 1.0),
        ("sparsity", -0.1),
        ("throughput", 0.0),
        ("throughput", float("inf")),
        ("accuracy", 1.2),
        ("accuracy", float("nan")),
        ("accuracy_source", "guessed"),
        ("backend", ""),
        ("latency_p99_ms", -1.0),
    ],
)
def test_bad_candidate_field(field, value):
    good = dict(id="c", num_instances=2, sparsity=0.5, backend="ort", precision="fp32", throughput=10.0, accuracy=0.8)
    good[field] = value
    with pytest.raises(SelectInputError, match=field if field != "id" else "id"):
        Candidate(**good)


def test_numpy_scalars_become_python_numbers():
    c = Candidate("np", np.int64(4), np.float32(0.5), "ort", "fp32", np.float64(12.5), np.float32(0.75))
    assert type(c.num_instances) is int and type(c.sparsity) is float and type(c.accuracy) is float
    assert (c.num_instances, c.sparsity, c.throughput, c.accuracy) == (4, 0.5, 12.5, 0.75)
    json.dumps(c.to_dict())


@pytest.mark.parametrize(
    "cands",
    [[], [cand("a", 1, 0.0, 1.0, 0.5), cand("a", 2, 0.0, 2.0, 0.5)], ["not a candidate"]],
)
def test_bad_candidate_lists(cands):
    with pytest.raises(SelectInputError):
        select(cands, min_accuracy=0.1)


# ------------------------------------------------------------------ Pareto front


def test_pareto_front_known_set():
    cands = [
        cand("slow-accurate", 1, 0.0, 10.0, 0.90),
        cand("mid", 2, 0.3, 50.0, 0.88),
        cand("dominated", 2, 0.5, 40.0, 0.87),      # mid is faster and more accurate
        cand("fast", 8, 0.9, 300.0, 0.70),
        cand("equal-thr-worse", 4, 0.9, 300.0, 0.65),  # same throughput as fast, lower accuracy
        cand("unknown", 8, 0.9, 900.0, None),
        cand("dup-of-mid", 3, 0.3, 50.0, 0.88),     # identical point: kept
    ]
    front = pareto_front(cands)
    assert [c.id for c in front] == ["slow-accurate", "dup-of-mid", "mid", "fast"]


@pytest.mark.parametrize("seed", [0, 1])
def test_pareto_front_properties(seed):
    rng = np.random.default_rng(seed)
    cands = [cand(f"c{i}", 1 + i % 4, 0.1, float(rng.uniform(10, 100)), float(rng.uniform(0.5, 0.9)))
             for i in range(30)]
    front = pareto_front(cands)
    front_ids = {c.id for c in front}

    def dominates(o, c):
        return o.throughput >= c.throughput and o.accuracy >= c.accuracy and (
            o.throughput > c.throughput or o.accuracy > c.accuracy)

    for c in cands:
        assert (c.id in front_ids) == (not any(dominates(o, c) for o in cands))
    assert [c.throughput for c in front] == sorted(c.throughput for c in front)
    assert pareto_front([]) == []


# ------------------------------------------------------------------ prediction


def fam_acc(n, s):
    ln = np.log(n)
    return 0.90 - 0.02 * ln - 0.05 * s - 0.2 * s * s - 0.01 * s * ln


def fam_thr(n, s):
    ln, big_l = np.log(n), np.log(1.0 - s + 0.01)
    return np.exp(np.log(100.0) + 0.9 * ln - 0.8 * big_l + 0.05 * ln * big_l)


def smooth_acc(n, s):  # not in the model family
    return 0.92 - 0.03 * np.sqrt(n - 1.0) - 0.15 * s**3


def smooth_thr(n, s):  # saturating in N, Amdahl-like in s: not in the family either
    return 120.0 * n / (1.0 + 0.1 * n) / (0.15 + 0.85 * (1.0 - s))


def measured(fa, ft, points=None, noise_acc=0.0, noise_thr=0.0, seed=0):
    rng = np.random.default_rng(seed)
    points = points or list(itertools.product(NUMS, SPARSITIES))
    out = []
    for n, s in points:
        a = float(np.clip(fa(n, s) + rng.normal(0.0, noise_acc), 0.0, 1.0)) if noise_acc else float(fa(n, s))
        t = float(ft(n, s) * np.exp(rng.normal(0.0, noise_thr))) if noise_thr else float(ft(n, s))
        out.append(cand(f"n{n}-s{s}", n, s, t, a))
    return out


GRID_NUMS = (1, 2, 3, 4, 5, 6, 8, 10)
GRID_S = tuple(np.linspace(0.0, 0.95, 20))


@pytest.mark.parametrize("threshold", [0.6, 0.745, 0.8, 0.83, 0.86, 0.89])
def test_noise_free_family_is_recovered(threshold):
    p = predict(measured(fam_acc, fam_thr), threshold=threshold)
    assert p.accuracy_model.loo_mae < 1e-6
    assert p.throughput_model.loo_mae < 1e-6
    assert p.accuracy_model.n_points == p.throughput_model.n_points == 20
    coef = p.accuracy_model.params["coefficients"]
    assert [coef[t] for t in ("1", "log N", "s", "s^2", "s*log N")] == pytest.approx(
        [0.90, -0.02, -0.05, -0.2, -0.01], abs=1e-9)
    tcoef = p.throughput_model.params["coefficients"]
    assert [tcoef[t] for t in ("1", "log N", "L", "L*log N")] == pytest.approx(
        [math.log(100.0), 0.9, -0.8, 0.05], abs=1e-9)

    truth = [(n, s, float(fam_acc(n, s)), float(fam_thr(n, s))) for n in GRID_NUMS for s in GRID_S]
    assert min(abs(a - threshold) for _, _, a, _ in truth) > 1e-6  # the budget is not on a knife edge
    for g, (n, s, a, t) in zip(p.grid, truth):
        assert (g["num_instances"], g["sparsity"]) == (n, pytest.approx(s))
        assert g["accuracy"] == pytest.approx(a, abs=1e-6)
        assert g["throughput"] == pytest.approx(t, rel=1e-6)
    ok = [x for x in truth if x[2] >= threshold]
    n_best, s_best, _, _ = max(ok, key=lambda x: x[3])
    assert p.recommended["num_instances"] == n_best
    assert p.recommended["sparsity"] == pytest.approx(s_best)
    # N = 10 or s > 0.9 lies outside the measured N in [1, 8], s in [0, 0.9]
    assert p.recommended["extrapolated"] == (n_best > 8 or s_best > 0.9 + 1e-12)
    assert ("extrapolation" in p.recommended["note"]) == p.recommended["extrapolated"]


@pytest.mark.parametrize(
    "fa, ft, noise_acc, noise_thr",
    [(fam_acc, fam_thr, 0.003, 0.03), (smooth_acc, smooth_thr, 0.003, 0.03), (smooth_acc, smooth_thr, 0.0, 0.0)],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noisy_smooth_surface_beats_nearest_neighbour(fa, ft, noise_acc, noise_thr, seed):
    p = predict(measured(fa, ft, noise_acc=noise_acc, noise_thr=noise_thr, seed=seed), threshold=0.8)
    for rep in (p.accuracy_model, p.throughput_model):
        assert math.isfinite(rep.loo_mae) and math.isfinite(rep.loo_mae_nearest_neighbour)
        assert rep.loo_mae <= rep.loo_mae_nearest_neighbour


def test_prediction_is_deterministic_and_order_free():
    cands = measured(smooth_acc, smooth_thr, noise_acc=0.003, noise_thr=0.03, seed=5)
    a = predict(cands, threshold=0.85).to_dict()
    b = predict(list(reversed(cands)), threshold=0.85).to_dict()
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.mark.parametrize(
    "points, acc_terms, thr_terms",
    [
        ([(1, 0.0)], ["1"], ["1"]),
        ([(1, 0.0), (2, 0.0)], ["1", "log N"], ["1", "log N"]),
        ([(1, 0.0), (1, 0.5)], ["1", "s"], ["1", "L"]),
        ([(1, 0.0), (2, 0.0), (1, 0.5)], ["1", "log N", "s"], ["1", "log N", "L"]),
        ([(1, 0.0), (2, 0.0), (4, 0.0), (8, 0.0)], ["1", "log N"], ["1", "log N"]),
        ([(1, 0.0), (2, 0.3), (4, 0.5), (1, 0.7)], ["1", "log N", "s", "s^2"], ["1", "log N", "L", "L*log N"]),
    ],
)
def test_fewer_points_than_parameters(points, acc_terms, thr_terms):
    cands = measured(fam_acc, fam_thr, points=points)
    grid_s = sorted({s for _, s in points} | {0.95})
    p = predict(cands, threshold=0.5, sparsities=grid_s)
    assert p.accuracy_model.params["terms"] == acc_terms
    assert p.throughput_model.params["terms"] == thr_terms
    assert p.accuracy_model.params["n_params"] <= len(points)
    for rep in (p.accuracy_model, p.throughput_model):
        if len(points) >= 2:
            assert math.isfinite(rep.loo_mae) and math.isfinite(rep.loo_mae_nearest_neighbour)
        else:
            assert math.isnan(rep.loo_mae) and math.isnan(rep.loo_mae_nearest_neighbour)
    assert len(p.grid) == len(GRID_NUMS) * len(grid_s)
    assert all(0.0 <= g["accuracy"] <= 1.0 and g["throughput"] > 0 for g in p.grid)
    if len(acc_terms) == len(points):  # as many terms as points: the fit interpolates its points
        at = {(g["num_instances"], g["sparsity"]): g for g in p.grid}
        for c in cands:
            assert at[(c.num_instances, c.sparsity)]["accuracy"] == pytest.approx(c.accuracy, abs=1e-9)
            assert at[(c.num_instances, c.sparsity)]["throughput"] == pytest.approx(c.throughput, rel=1e-9)
    json.dumps(p.to_dict(), allow_nan=False)  # nan reported as null


def test_single_point_predicts_constant():
    p = predict([cand("only", 2, 0.4, 50.0, 0.8)], threshold=0.5)
    assert all(g["accuracy"] == pytest.approx(0.8) for g in p.grid)
    assert all(g["throughput"] == pytest.approx(50.0) for g in p.grid)
    assert p.recommended["extrapolated"]


def test_unknown_accuracy_used_only_for_throughput():
    cands = measured(fam_acc, fam_thr) + [cand("extra", 10, 0.95, 3000.0, None)]
    p = predict(cands, threshold=0.8)
    assert p.accuracy_model.n_points == 20 and p.throughput_model.n_points == 21


def test_no_grid_point_meets_threshold():
    p = predict(measured(fam_acc, fam_thr), threshold=0.99)
    assert p.recommended is None


@pytest.mark.parametrize(
    "cands, kwargs, match",
    [
        ([cand("a", 1, 0.0, 1.0, 0.5), Candidate("b", 2, 0.0, "tensorrt", "fp16", 2.0, 0.5)], {}, "backend"),
        ([cand("a", 1, 0.0, 1.0, None)], {}, "known accuracy"),
        ([cand("a", 1, 0.0, 1.0, 0.5)], {"threshold": 1.5}, "threshold"),
        ([cand("a", 1, 0.0, 1.0, 0.5)], {"nums": (0, 2)}, "nums"),
        ([cand("a", 1, 0.0, 1.0, 0.5)], {"sparsities": (0.0, 1.0)}, "sparsities"),
    ],
)
def test_predict_bad_input(cands, kwargs, match):
    kwargs = {"threshold": 0.5, **kwargs}
    with pytest.raises(SelectInputError, match=match):
        predict(cands, **kwargs)


def test_accuracy_family_with_a_floor_at_chance():
    """A surface where every multiplexed model sits at chance (0.5, two classes): the plain quadratic overshoots
    the floor, the logit-above-chance family follows it; predict keeps the family with the lower leave-one-out
    error (computed here by hand for the plain one) and says so; chance is refused outside (0, 1)."""
    from prumux_compile.select.meta_model import ACCURACY_FORMULA, _accuracy_features, _fit

    pts = [(1, 0.0, 0.85), (1, 0.5, 0.77), (1, 0.8, 0.68), (2, 0.0, 0.50), (2, 0.5, 0.50), (2, 0.8, 0.49),
           (5, 0.0, 0.51), (5, 0.5, 0.49), (5, 0.8, 0.49)]
    cands = [cand(f"c{i}", n, s, 100.0 * n / (1 - s), a) for i, (n, s, a) in enumerate(pts)]
    plain = predict(cands, threshold=0.5)
    floored = predict(cands, threshold=0.5, chance=0.5)
    # the plain family's LOO error, recomputed independently of _loo_model
    ln = np.log([n for n, _, _ in pts]); sp = np.array([s for _, s, _ in pts]); acc = np.array([a for *_, a in pts])
    errs = []
    for i in range(len(pts)):
        m = np.arange(len(pts)) != i
        feats = _accuracy_features(ln[m], sp[m])
        kept, coef = _fit(feats, acc[m], ("1", "log N", "s", "s^2", "s*log N"))
        one = _accuracy_features(ln[~m], sp[~m])
        errs.append(abs(sum(c * one[t][0] for t, c in zip(kept, coef)) - acc[i]))
    assert plain.accuracy_model.loo_mae == pytest.approx(float(np.mean(errs)), abs=1e-12)
    choice = floored.accuracy_model.params["family_choice"]
    assert choice["chosen"] == "floor at chance"
    assert [c["loo_mae"] for c in choice["candidates"]][0] == pytest.approx(plain.accuracy_model.loo_mae)
    assert floored.accuracy_model.loo_mae < plain.accuracy_model.loo_mae
    assert floored.accuracy_model.params["formula"] != ACCURACY_FORMULA and floored.accuracy_model.params["chance"] == 0.5
    # on the floor the prediction stays at or above chance (the quadratic may dip below it)
    at = {(g["num_instances"], round(g["sparsity"], 2)): g["accuracy"] for g in floored.grid}
    assert all(v >= 0.5 - 1e-12 for v in at.values())
    for bad in (0.0, 1.0, float("nan")):
        with pytest.raises(PrumuxError, match="chance must be"):
            predict(cands, threshold=0.5, chance=bad)
