"""Auto-PruMUX prediction: the paper's meta-model of accuracy and throughput over (N, s).

PruMUX (Su et al., Findings of ACL 2023, arXiv 2305.14706, section 5 "Auto-PruMUX") fits performance models of
accuracy and throughput as smooth functions of the multiplexing width N and the sparsity s on a few trained
configurations, then predicts the best (N, s) for an accuracy budget. We use a small, fixed family of models
fitted by ordinary least squares (docs/report.md, `prediction`):

* accuracy (fraction in [0, 1])::

      A(N, s) = a0 + a1*log N + a2*s + a3*s^2 + a4*s*log N

  and, when the caller gives the chance level c of a classifier (1/C), the same terms on a logit scale above
  chance, ``A = c + (1 - c) * sigmoid(z)``: a model that learned nothing (e.g. an under-trained multiplexed one)
  sits at c, a floor the quadratic cannot follow. Whichever family has the lower leave-one-out error is used
  (``params["family_choice"]``). This floored family is our addition, not the paper's.

* throughput (sequences/s), fitted in log space (throughput is multiplicative in N and in 1/(1-s): a
  multiplexed model serves N sequences per pass; pruning removes a fraction s of the encoder's work)::

      log T(N, s) = b0 + b1*log N + b2*L + b3*L*log N,    L = log(1 - s + eps),  eps = 0.01

Terms are taken in the order written above and a term is kept only if it raises the rank of the design matrix
(columns scaled to unit max-abs, relative singular-value cut-off 1e-9), and only while the number of kept terms
does not exceed the number of points. So 2 points at N = 1 give ``A = a0 + a2*s``; points all at s = 0 give no
s-terms. The kept terms are listed in :attr:`FitReport.params`.

Trust is reported as leave-one-out (LOO) mean absolute error — the whole procedure, term choice included, is
re-run without each point — next to the LOO error of a nearest-neighbour baseline (predict the measured value
of the closest other point in (log N, s), Euclidean; equidistant neighbours are averaged). All computation is
deterministic (no randomness).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from prumux_compile.select.auto_prumux import (
    ACCURACY_TOLERANCE,
    Candidate,
    SelectInputError,
    _as_list,
    _finite,
    metric_range,
)

__all__ = [
    "ACCURACY_TERMS",
    "THROUGHPUT_EPS",
    "THROUGHPUT_TERMS",
    "FitReport",
    "Prediction",
    "PrecisionPrediction",
    "predict",
    "predict_with_precision",
]

#: Terms of the accuracy model, in the order they are admitted.
ACCURACY_TERMS = ("1", "log N", "s", "s^2", "s*log N")
#: Terms of the log-throughput model, in the order they are admitted (L = log(1 - s + eps)).
THROUGHPUT_TERMS = ("1", "log N", "L", "L*log N")
#: eps in L = log(1 - s + eps); keeps L finite as s -> 1.
THROUGHPUT_EPS = 0.01

_RANK_RTOL = 1e-9

ACCURACY_FORMULA = "A(N,s) = a0 + a1*log N + a2*s + a3*s^2 + a4*s*log N (PruMUX section 5 meta-model family)"
#: The same terms on a logit scale above chance c = 1/C (C classes): a model that has learned nothing sits at c, so
#: accuracy is bounded below by c and saturates there, which the plain quadratic cannot follow. Used instead of
#: :data:`ACCURACY_FORMULA` when its leave-one-out error is lower (``params["family_choice"]`` says which won).
ACCURACY_FLOOR_FORMULA = (
    "A(N,s) = c + (1 - c) * sigmoid(z), z = a0 + a1*log N + a2*s + a3*s^2 + a4*s*log N, c = chance = 1/C; fitted on "
    "z = logit(clip((A - c) / (1 - c), {eps}, 1 - {eps}))"
)
#: Clip of the fraction above chance before the logit (a measured accuracy at or below chance).
FLOOR_EPS = 0.01
THROUGHPUT_FORMULA = (
    f"log T(N,s) = b0 + b1*log N + b2*L + b3*L*log N, L = log(1 - s + {THROUGHPUT_EPS}) (PruMUX section 5 meta-model family)"
)


@dataclass
class FitReport:
    """How one performance model was fitted and how far to trust it.

    Attributes:
        name: ``"accuracy"`` or ``"throughput"``.
        loo_mae: leave-one-out mean absolute error of the model, in the target's units (accuracy fraction, or
            sequences/s for throughput); ``nan`` with fewer than 2 points.
        loo_mae_nearest_neighbour: the same for the nearest-neighbour baseline; ``nan`` with fewer than 2 points.
        n_points: number of measured points used.
        params: ``formula``, ``target``, ``units``, ``terms`` (kept), ``dropped_terms``, ``coefficients``
            (term -> value), ``n_params``, and ``eps`` for throughput.
    """

    name: str
    loo_mae: float
    loo_mae_nearest_neighbour: float
    n_points: int
    params: dict

    def to_dict(self) -> dict:
        """JSON-ready dict (``nan`` becomes ``None``)."""
        return {
            "name": self.name,
            "loo_mae": _json_float(self.loo_mae),
            "loo_mae_nearest_neighbour": _json_float(self.loo_mae_nearest_neighbour),
            "n_points": self.n_points,
            "params": self.params,
        }


@dataclass
class Prediction:
    """Result of :func:`predict`.

    Attributes:
        accuracy_model, throughput_model: fit reports.
        grid: one dict per (N, s) grid point, N-major: ``num_instances`` (int), ``sparsity`` (float),
            ``accuracy`` (predicted, clipped to [0, 1]), ``throughput`` (predicted sequences/s), ``extrapolated``
            (bool: outside the measured range of N or s).
        recommended: the grid point with the highest predicted throughput whose predicted accuracy is
            >= ``threshold`` (ties: higher accuracy, lower N, lower s), plus ``note`` (str, says whether it is
            an extrapolation and quotes the LOO errors); ``None`` when no grid point is predicted to qualify.
        threshold: the accuracy floor used (fraction).
        measured_range: ``{"num_instances": [min, max], "sparsity": [min, max]}`` over the points used.
    """

    accuracy_model: FitReport
    throughput_model: FitReport
    grid: list[dict]
    recommended: dict | None
    threshold: float = math.nan
    measured_range: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready dict (``nan`` becomes ``None``)."""
        return {
            "accuracy_model": self.accuracy_model.to_dict(),
            "throughput_model": self.throughput_model.to_dict(),
            "threshold": _json_float(self.threshold),
            "measured_range": self.measured_range,
            "grid": self.grid,
            "recommended": self.recommended,
        }


def _json_float(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# --------------------------------------------------------------------------------------------------- features

_Features = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]


def _accuracy_features(log_n: np.ndarray, s: np.ndarray) -> dict[str, np.ndarray]:
    return {"1": np.ones_like(s), "log N": log_n, "s": s, "s^2": s * s, "s*log N": s * log_n}


def _throughput_features(log_n: np.ndarray, s: np.ndarray) -> dict[str, np.ndarray]:
    big_l = np.log(1.0 - s + THROUGHPUT_EPS)
    return {"1": np.ones_like(s), "log N": log_n, "L": big_l, "L*log N": big_l * log_n}


# --------------------------------------------------------------------------------------------------- fitting


def _full_rank(columns: list[np.ndarray]) -> bool:
    x = np.stack(columns, axis=1)
    scale = np.max(np.abs(x), axis=0)
    if np.any(scale == 0.0):
        return False
    sv = np.linalg.svd(x / scale, compute_uv=False)
    return bool(sv[-1] > _RANK_RTOL * sv[0])


def _fit(feats: dict[str, np.ndarray], y: np.ndarray, order: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Greedy term admission (see module docstring), then least squares on max-abs-scaled columns.

    Returns (kept terms, coefficients in the original column scale). Needs len(y) >= 1.
    """
    n = len(y)
    kept: list[str] = []
    for term in order:
        if len(kept) >= n:
            break
        if _full_rank([feats[t] for t in kept] + [feats[term]]):
            kept.append(term)
    x = np.stack([feats[t] for t in kept], axis=1)
    scale = np.max(np.abs(x), axis=0)
    beta, *_ = np.linalg.lstsq(x / scale, y, rcond=None)
    return kept, beta / scale


def _evaluate(feats: dict[str, np.ndarray], kept: list[str], coef: np.ndarray) -> np.ndarray:
    out = np.zeros_like(next(iter(feats.values())), dtype=np.float64)
    for t, c in zip(kept, coef):
        out = out + c * feats[t]
    return out


def _subset(feats: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[mask] for k, v in feats.items()}


def _loo_model(
    feats: dict[str, np.ndarray], y: np.ndarray, order: Sequence[str], back: Callable[[np.ndarray], np.ndarray],
    values: np.ndarray,
) -> float:
    """LOO MAE of the whole fitting procedure; errors measured after ``back`` (target -> reported units) against
    the measured ``values`` (not the back-transformed target, which a clipped transform would bias)."""
    n = len(y)
    if n < 2:
        return math.nan
    errs = []
    for i in range(n):
        mask = np.arange(n) != i
        kept, coef = _fit(_subset(feats, mask), y[mask], order)
        pred = _evaluate(_subset(feats, ~mask), kept, coef)
        errs.append(abs(float(back(pred)[0]) - float(values[i])))
    return float(np.mean(errs))


def _loo_nearest(log_n: np.ndarray, s: np.ndarray, values: np.ndarray) -> float:
    """LOO MAE of nearest-neighbour prediction in (log N, s); equidistant neighbours averaged."""
    n = len(values)
    if n < 2:
        return math.nan
    errs = []
    for i in range(n):
        others = np.arange(n) != i
        d = np.hypot(log_n[others] - log_n[i], s[others] - s[i])
        near = np.abs(d - d.min()) <= 1e-12
        errs.append(abs(float(np.mean(values[others][near])) - float(values[i])))
    return float(np.mean(errs))


def _fit_report(
    name: str,
    formula: str,
    target: str,
    units: str,
    order: Sequence[str],
    features: _Features,
    log_n: np.ndarray,
    s: np.ndarray,
    y: np.ndarray,
    values: np.ndarray,
    back: Callable[[np.ndarray], np.ndarray],
    extra: dict,
) -> tuple[FitReport, list[str], np.ndarray]:
    feats = features(log_n, s)
    kept, coef = _fit(feats, y, order)
    params = {
        "formula": formula,
        "target": target,
        "units": units,
        "terms": list(kept),
        "dropped_terms": [t for t in order if t not in kept],
        "coefficients": {t: float(c) for t, c in zip(kept, coef)},
        "n_params": len(kept),
        **extra,
    }
    report = FitReport(
        name=name,
        loo_mae=_loo_model(feats, y, order, back, values),
        loo_mae_nearest_neighbour=_loo_nearest(log_n, s, values),
        n_points=len(y),
        params=params,
    )
    return report, kept, coef


# --------------------------------------------------------------------------------------------------- public API


def predict(
    candidates: Iterable[Candidate],
    *,
    threshold: float,
    nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10),
    sparsities: Sequence[float] | np.ndarray = tuple(np.linspace(0.0, 0.95, 20)),
    chance: float | None = None,
) -> Prediction:
    """Fit the accuracy and throughput models (PruMUX section 5) and recommend the (N, s) to train next.

    The accuracy model uses the candidates with known accuracy; the throughput model uses all of them. The
    candidates must share one backend and precision (throughput is not comparable across engines: filter first).
    Formulas, term selection and LOO errors: see the module docstring.

    Args:
        candidates: non-empty iterable of :class:`Candidate`, unique ids, one (backend, precision), at least
            one with known accuracy.
        threshold: floor in the candidates' metric (within its range, e.g. [0, 1] for accuracy, [-1, 1] for
            Pearson's r), e.g. ``Selection.threshold`` from :func:`select`. Predicted values are clipped to that
            range.
        nums: grid of multiplexing widths N (ints >= 1).
        sparsities: grid of sparsities, each in [0, 1).
        chance: the accuracy of a model that learned nothing (1/C for C classes), or None. With it (and the
            accuracy metric) the accuracy model is also fitted with a floor at chance
            (:data:`ACCURACY_FLOOR_FORMULA`), and whichever family has the lower leave-one-out error is used.

    Returns:
        :class:`Prediction` with the grid (len(nums) * len(sparsities) points, N-major) and the recommendation.

    Raises:
        SelectInputError (exit 2): bad threshold or grid, mixed backends/precisions, no accuracy known.
    """
    items = _as_list(candidates)
    metrics = sorted({c.metric for c in items})
    if len(metrics) > 1:
        raise SelectInputError(f"predict needs candidates of one metric, got {', '.join(metrics)}")
    lo, hi = metric_range(metrics[0])
    if not _finite(threshold) or not lo <= float(threshold) <= hi:
        what = "an accuracy fraction in [0, 1]" if metrics[0] == "accuracy" else f"a {metrics[0]} value in [{lo:g}, {hi:g}]"
        raise SelectInputError(f"threshold must be {what}, got {threshold!r}")
    threshold = float(threshold)
    nums = list(nums)
    if not nums or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 for n in nums):
        raise SelectInputError(f"nums must be a non-empty list of ints >= 1, got {nums!r}")
    sparsities = [float(x) for x in np.asarray(sparsities, dtype=np.float64).ravel()]
    if not sparsities or any(not math.isfinite(x) or not 0.0 <= x < 1.0 for x in sparsities):
        raise SelectInputError(f"sparsities must be a non-empty list of values in [0, 1), got {sparsities!r}")
    engines = sorted({(c.backend, c.precision) for c in items})
    if len(engines) > 1:
        raise SelectInputError(
            "predict needs candidates of one backend and precision, got "
            + ", ".join(f"{b}/{p}" for b, p in engines)
            + "; filter them first"
        )
    items = sorted(items, key=lambda c: c.id)  # input order must not matter
    with_acc = [c for c in items if c.accuracy is not None]
    if not with_acc:
        raise SelectInputError("predict needs at least one candidate with a known accuracy")

    def arrays(cs: list[Candidate]) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.log(np.array([c.num_instances for c in cs], dtype=np.float64)),
            np.array([c.sparsity for c in cs], dtype=np.float64),
        )

    ln_a, s_a = arrays(with_acc)
    acc = np.array([c.accuracy for c in with_acc], dtype=np.float64)
    acc_report, acc_terms, acc_coef = _fit_report(
        "accuracy", ACCURACY_FORMULA, "accuracy", "accuracy fraction", ACCURACY_TERMS, _accuracy_features,
        ln_a, s_a, acc, acc, lambda v: v, {},
    )
    acc_back: Callable[[np.ndarray], np.ndarray] = lambda v: v  # noqa: E731
    if chance is not None:
        if metrics[0] != "accuracy" or not _finite(chance) or not 0.0 < float(chance) < 1.0:
            raise SelectInputError(f"chance must be an accuracy fraction in (0, 1) for the accuracy metric, got "
                                   f"{chance!r} ({metrics[0]})")
        c = float(chance)

        def to_logit(a: np.ndarray) -> np.ndarray:
            u = np.clip((a - c) / (1.0 - c), FLOOR_EPS, 1.0 - FLOOR_EPS)
            return np.log(u / (1.0 - u))

        def from_logit(z: np.ndarray) -> np.ndarray:
            return c + (1.0 - c) / (1.0 + np.exp(-z))

        floor_report, floor_terms, floor_coef = _fit_report(
            "accuracy", ACCURACY_FLOOR_FORMULA.format(eps=FLOOR_EPS), "logit of accuracy above chance",
            "accuracy fraction", ACCURACY_TERMS, _accuracy_features, ln_a, s_a, to_logit(acc), acc, from_logit,
            {"chance": c},
        )
        plain = {"formula": ACCURACY_FORMULA, "loo_mae": _json_float(acc_report.loo_mae)}
        floored = {"formula": floor_report.params["formula"], "loo_mae": _json_float(floor_report.loo_mae)}
        if math.isfinite(floor_report.loo_mae) and (not math.isfinite(acc_report.loo_mae)
                                                     or floor_report.loo_mae < acc_report.loo_mae):
            floor_report.params["family_choice"] = {"chosen": "floor at chance", "candidates": [plain, floored]}
            acc_report, acc_terms, acc_coef, acc_back = floor_report, floor_terms, floor_coef, from_logit
        else:
            acc_report.params["family_choice"] = {"chosen": "plain", "candidates": [plain, floored]}
    ln_t, s_t = arrays(items)
    thr = np.array([c.throughput for c in items], dtype=np.float64)
    thr_report, thr_terms, thr_coef = _fit_report(
        "throughput", THROUGHPUT_FORMULA, "log throughput", "sequences/s", THROUGHPUT_TERMS,
        _throughput_features, ln_t, s_t, np.log(thr), thr, np.exp, {"eps": THROUGHPUT_EPS},
    )

    n_lo = min(c.num_instances for c in items)
    n_hi = max(c.num_instances for c in items)
    n_lo_a = min(c.num_instances for c in with_acc)
    n_hi_a = max(c.num_instances for c in with_acc)
    s_lo, s_hi = float(s_t.min()), float(s_t.max())
    s_lo_a, s_hi_a = float(s_a.min()), float(s_a.max())
    measured_range = {
        "num_instances": [max(n_lo, n_lo_a), min(n_hi, n_hi_a)],
        "sparsity": [max(s_lo, s_lo_a), min(s_hi, s_hi_a)],
    }

    grid_n = np.repeat(np.array(nums, dtype=np.float64), len(sparsities))
    grid_s = np.tile(np.array(sparsities, dtype=np.float64), len(nums))
    grid_ln = np.log(grid_n)
    pred_acc = np.clip(acc_back(_evaluate(_accuracy_features(grid_ln, grid_s), acc_terms, acc_coef)), lo, hi)
    pred_thr = np.exp(_evaluate(_throughput_features(grid_ln, grid_s), thr_terms, thr_coef))
    (nr_lo, nr_hi), (sr_lo, sr_hi) = measured_range["num_instances"], measured_range["sparsity"]
    grid = []
    for n, s, a, t in zip(grid_n, grid_s, pred_acc, pred_thr):
        extrapolated = not (nr_lo <= n <= nr_hi and sr_lo - 1e-12 <= s <= sr_hi + 1e-12)
        grid.append(
            {
                "num_instances": int(n),
                "sparsity": float(s),
                "accuracy": float(a),
                "throughput": float(t),
                "extrapolated": bool(extrapolated),
            }
        )

    ok = [g for g in grid if g["accuracy"] >= threshold - ACCURACY_TOLERANCE]
    recommended = None
    if ok:
        best = min(ok, key=lambda g: (-g["throughput"], -g["accuracy"], g["num_instances"], g["sparsity"]))
        trust = (
            f"LOO MAE accuracy {acc_report.loo_mae:.4f} "
            f"(nearest neighbour {acc_report.loo_mae_nearest_neighbour:.4f}), "
            f"throughput {thr_report.loo_mae:.1f} seq/s (nearest neighbour {thr_report.loo_mae_nearest_neighbour:.1f})"
        )
        if best["extrapolated"]:
            where = (
                f"outside the measured range (N in [{nr_lo}, {nr_hi}], s in [{sr_lo:.3f}, {sr_hi:.3f}]): "
                "extrapolation, measure it before trusting it"
            )
        else:
            where = f"within the measured range (N in [{nr_lo}, {nr_hi}], s in [{sr_lo:.3f}, {sr_hi:.3f}])"
        recommended = dict(best)
        recommended["note"] = f"predicted accuracy >= {threshold:.4f}; {where}; {trust}"

    return Prediction(
        accuracy_model=acc_report,
        throughput_model=thr_report,
        grid=grid,
        recommended=recommended,
        threshold=threshold,
        measured_range=measured_range,
    )


# --------------------------------------------------------------------------------------------------- precision

PRECISION_FORMULA = (
    "A_p(N,s) = A(N,s) + d_p, T_p(N,s) = T(N,s) * f_p: the (N, s) family above fitted on the reference engine "
    "level, plus one fitted accuracy offset d_p and one throughput factor f_p per other level (precision, or "
    "backend/precision when several backends were built)"
)


@dataclass
class PrecisionPrediction:
    """Result of :func:`predict_with_precision`: the (N, s) meta-model of the reference level plus a precision
    factor per other level.

    Attributes:
        base: :class:`Prediction` of the reference level alone (the family's fit, its LOO errors and grid).
        reference: the reference level (e.g. ``"fp32"``).
        levels: level -> ``accuracy_offset`` (d_p, metric units), ``throughput_factor`` (f_p), ``n_points``,
            ``loo_mae_accuracy`` / ``loo_mae_throughput`` (leave-one-out mean absolute errors of that level's
            points, sequences/s for throughput; for the reference level the base model's), and the nearest-neighbour
            baseline's ``loo_mae_accuracy_nearest_neighbour`` / ``loo_mae_throughput_nearest_neighbour``.
        grid: one dict per (level, N, s): ``precision`` (the level), ``num_instances``, ``sparsity``, ``accuracy``
            (clipped to the metric's range), ``throughput``, ``extrapolated``.
        recommended: highest predicted throughput whose predicted accuracy meets ``threshold`` over every level
            (ties: higher accuracy, lower N, lower s, level name), with a ``note``; None when none qualifies.
        threshold: the floor used.
    """

    base: Prediction
    reference: str
    levels: dict
    grid: list[dict]
    recommended: dict | None
    threshold: float

    def to_dict(self) -> dict:
        """JSON-ready dict: the base prediction's fields (``accuracy_model``, ``throughput_model``,
        ``measured_range``) with the grid and recommendation over every level, plus ``reference_level``,
        ``precision_factors`` and ``precision_formula``."""
        d = self.base.to_dict()
        d.update(grid=self.grid, recommended=self.recommended, threshold=_json_float(self.threshold),
                 reference_level=self.reference, precision_formula=PRECISION_FORMULA,
                 precision_factors={k: {kk: (_json_float(vv) if isinstance(vv, float) else vv)
                                        for kk, vv in v.items()} for k, v in self.levels.items()})
        return d


def _level_of(items: list[Candidate]) -> Callable[[Candidate], str]:
    several = len({c.backend for c in items}) > 1
    return (lambda c: f"{c.backend}/{c.precision}") if several else (lambda c: c.precision)


def predict_with_precision(
    candidates: Iterable[Candidate],
    *,
    threshold: float,
    nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10),
    sparsities: Sequence[float] | np.ndarray = tuple(np.linspace(0.0, 0.95, 20)),
    reference: str | None = None,
    chance: float | None = None,
) -> PrecisionPrediction:
    """Auto-PruMUX over (N, s, precision): :func:`predict`'s family on the reference level, plus a precision factor.

    The reference level's candidates are fitted by :func:`predict` (whatever its A(N, s) / T(N, s) family is).
    Every other level p (a precision, or backend/precision when the candidates come from several backends) gets
    ``d_p`` = mean over its points of (measured accuracy - reference model's accuracy at that (N, s)) and
    ``f_p`` = exp(mean of log(measured throughput / reference model's throughput)): the same checkpoint at int8 or
    bf16 shifts accuracy by a roughly constant amount and scales throughput by a roughly constant factor.

    Leave-one-out: a reference point's error is the base model's LOO error; another level's point is predicted
    by the reference model plus that level's factor fitted without the point (0 / 1 when it was the level's only
    point). The nearest-neighbour baseline predicts the nearest other point of the same level in (log N, s)
    (equidistant ones averaged), or of the reference level when the level has no other point.

    Args:
        candidates: as for :func:`predict`, but any number of backends and precisions.
        threshold, nums, sparsities, chance: as for :func:`predict` (``chance`` picks the accuracy family of the
            reference level).
        reference: the reference level; default the level with "fp32" and the most points with known accuracy
            (else the level with the most such points; ties by name).

    Raises:
        SelectInputError: as :func:`predict`; also an unknown ``reference`` or one with no known accuracy.
    """
    items = sorted(_as_list(candidates), key=lambda c: c.id)
    level = _level_of(items)
    levels = sorted({level(c) for c in items})
    with_acc = [c for c in items if c.accuracy is not None]

    def rank(lv: str) -> tuple:
        n_acc = sum(1 for c in with_acc if level(c) == lv)
        return (n_acc == 0, "fp32" not in lv, -n_acc, lv)

    ref = reference if reference is not None else min(levels, key=rank)
    if ref not in levels:
        raise SelectInputError(f"reference level {ref!r} is not among the candidates' levels {', '.join(levels)}")
    ref_items = [c for c in items if level(c) == ref]
    base = predict(ref_items, threshold=threshold, nums=nums, sparsities=sparsities, chance=chance)
    lo, hi = metric_range(items[0].metric)

    cache: dict[tuple[int, float], tuple[float, float]] = {}

    def at(n: int, s: float) -> tuple[float, float]:
        """(accuracy, throughput) of the reference model at (n, s)."""
        key = (int(n), float(s))
        if key not in cache:
            g = predict(ref_items, threshold=threshold, nums=(int(n),), sparsities=(float(s),), chance=chance).grid[0]
            cache[key] = (g["accuracy"], g["throughput"])
        return cache[key]

    info: dict[str, dict] = {}
    for lv in levels:
        pts = [c for c in items if level(c) == lv]
        acc_pts = [c for c in pts if c.accuracy is not None]
        if lv == ref:
            info[lv] = {"accuracy_offset": 0.0, "throughput_factor": 1.0, "n_points": len(pts), "reference": True,
                        "loo_mae_accuracy": base.accuracy_model.loo_mae,
                        "loo_mae_throughput": base.throughput_model.loo_mae,
                        "loo_mae_accuracy_nearest_neighbour": base.accuracy_model.loo_mae_nearest_neighbour,
                        "loo_mae_throughput_nearest_neighbour": base.throughput_model.loo_mae_nearest_neighbour}
            continue
        d_acc = np.array([c.accuracy - at(c.num_instances, c.sparsity)[0] for c in acc_pts], dtype=np.float64)
        d_thr = np.array([math.log(c.throughput / at(c.num_instances, c.sparsity)[1]) for c in pts], dtype=np.float64)
        acc_err, thr_err = [], []
        for i, c in enumerate(acc_pts):
            rest = np.delete(d_acc, i)
            offset = float(rest.mean()) if rest.size else 0.0
            acc_err.append(abs(float(np.clip(at(c.num_instances, c.sparsity)[0] + offset, lo, hi)) - c.accuracy))
        for i, c in enumerate(pts):
            rest = np.delete(d_thr, i)
            factor = math.exp(float(rest.mean())) if rest.size else 1.0
            thr_err.append(abs(at(c.num_instances, c.sparsity)[1] * factor - c.throughput))
        info[lv] = {"accuracy_offset": float(d_acc.mean()) if d_acc.size else 0.0,
                    "throughput_factor": math.exp(float(d_thr.mean())) if d_thr.size else 1.0,
                    "n_points": len(pts), "reference": False,
                    "loo_mae_accuracy": float(np.mean(acc_err)) if acc_err else math.nan,
                    "loo_mae_throughput": float(np.mean(thr_err)) if thr_err else math.nan,
                    "loo_mae_accuracy_nearest_neighbour": _loo_nearest_level(acc_pts, ref_items, "accuracy"),
                    "loo_mae_throughput_nearest_neighbour": _loo_nearest_level(pts, ref_items, "throughput")}

    grid = []
    for lv in levels:
        for g in base.grid:
            grid.append({"precision": lv, "num_instances": g["num_instances"], "sparsity": g["sparsity"],
                         "accuracy": float(np.clip(g["accuracy"] + info[lv]["accuracy_offset"], lo, hi)),
                         "throughput": float(g["throughput"] * info[lv]["throughput_factor"]),
                         "extrapolated": g["extrapolated"]})
    ok = [g for g in grid if g["accuracy"] >= threshold - ACCURACY_TOLERANCE]
    recommended = None
    if ok:
        best = min(ok, key=lambda g: (-g["throughput"], -g["accuracy"], g["num_instances"], g["sparsity"],
                                      g["precision"]))
        lv = info[best["precision"]]
        recommended = dict(best)
        recommended["note"] = (
            f"predicted {items[0].metric} >= {threshold:.4f} at {best['precision']}; "
            + ("extrapolated in (N, s); " if best["extrapolated"] else "within the measured (N, s) range; ")
            + f"LOO MAE of this level: accuracy {_fmt(lv['loo_mae_accuracy'], 4)}, throughput "
            f"{_fmt(lv['loo_mae_throughput'], 1)} seq/s"
        )
    return PrecisionPrediction(base=base, reference=ref, levels=info, grid=grid, recommended=recommended,
                               threshold=float(threshold))


def _fmt(x: float, digits: int) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _loo_nearest_level(points: list[Candidate], ref_points: list[Candidate], what: str) -> float:
    """LOO MAE of predicting each point by its nearest other point of the same level in (log N, s) (equidistant
    ones averaged), or by the nearest reference-level point when the level has no other point."""
    if not points:
        return math.nan
    errs = []
    for i, c in enumerate(points):
        pool = [p for j, p in enumerate(points) if j != i] or [p for p in ref_points if getattr(p, what) is not None]
        if not pool:
            continue
        d = np.array([math.hypot(math.log(p.num_instances) - math.log(c.num_instances), p.sparsity - c.sparsity)
                      for p in pool])
        near = np.abs(d - d.min()) <= 1e-12
        errs.append(abs(float(np.mean([getattr(p, what) for p, k in zip(pool, near) if k])) - getattr(c, what)))
    return float(np.mean(errs)) if errs else math.nan
