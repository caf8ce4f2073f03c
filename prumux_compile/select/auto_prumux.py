"""Auto-PruMUX selection: pick the fastest measured candidate that meets an accuracy budget.

PruMUX (Su et al., Findings of ACL 2023, arXiv 2305.14706, section 5 "Auto-PruMUX") chooses a multiplexing width N
and a sparsity s for an *accuracy-loss budget* relative to the unpruned, un-multiplexed model. This module does
the measured half of that (docs/report.md, `selection`): among measured candidates, the one with the
highest throughput whose accuracy is within the budget, with deterministic tie-breaks. The predictive half (the
paper's meta-model) lives in :mod:`prumux_compile.select.meta_model`.

Units throughout: throughput in sequences per second, latency in milliseconds, sparsity as the fraction of
encoder parameters removed, in [0, 1). "Accuracy" is the task's metric (:data:`METRICS`): accuracy as a fraction
in [0, 1] for classifiers, Pearson's r (or Spearman's rho) in [-1, 1] for a one-output regression head (STS-B
style); a budget is expressed in that metric.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from prumux_compile.errors import InputError, NoCandidateError

__all__ = [
    "METRICS",
    "metric_range",
    "ACCURACY_SOURCES",
    "ACCURACY_TOLERANCE",
    "Candidate",
    "Selection",
    "SelectInputError",
    "pareto_front",
    "raise_if_none",
    "select",
]

#: The task's metric (:attr:`Candidate.metric`) -> (lowest value, highest value, short name used in messages).
METRICS: dict[str, tuple[float, float, str]] = {
    "accuracy": (0.0, 1.0, "accuracy"),
    "pearson": (-1.0, 1.0, "Pearson r"),
    "spearman": (-1.0, 1.0, "Spearman rho"),
}


def metric_range(metric: str) -> tuple[float, float]:
    """(lowest, highest) value of ``metric`` (a key of :data:`METRICS`).

    Raises:
        SelectInputError: unknown metric.
    """
    if metric not in METRICS:
        raise SelectInputError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    lo, hi, _ = METRICS[metric]
    return lo, hi


#: Allowed values of :attr:`Candidate.accuracy_source`.
ACCURACY_SOURCES = ("measured", "recorded", "teacher-agreement")

#: Absolute slack when comparing an accuracy with the floor, so that e.g. 0.84 meets ``0.85 - 0.01`` despite
#: floating-point rounding. Far below any meaningful accuracy difference (one example in 10^12).
ACCURACY_TOLERANCE = 1e-12


class SelectInputError(InputError, ValueError):
    """Bad input to selection or prediction (bad candidate field, bad budget, unknown baseline). Exit 2.

    Also a :class:`ValueError`, so callers that treat argument errors generically catch it.
    """


def _finite(x: object) -> bool:
    """True for a finite real number (Python or numpy), False for bools, None, strings, nan and inf."""
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_)) and math.isfinite(float(x))


@dataclass(frozen=True)
class Candidate:
    """One measured configuration: (checkpoint, N, measured sparsity s, backend, precision) and its metrics.

    Fields:
        id: unique, non-empty name (used in reports and as the last tie-break).
        num_instances: multiplexing width N >= 1 (int).
        sparsity: measured fraction of encoder parameters removed, float in [0, 1).
        backend, precision: engine backend (e.g. ``"ort"``) and precision (e.g. ``"fp32"``), non-empty strings.
        throughput: measured sequences per second, finite and > 0.
        accuracy: the task's metric (``metric``) within its range (:data:`METRICS`: a fraction in [0, 1] for
            accuracy, [-1, 1] for a correlation), or ``None`` when unknown (such a candidate is never chosen).
        accuracy_source: one of :data:`ACCURACY_SOURCES`.
        latency_p50_ms, latency_p99_ms: optional latency percentiles in milliseconds, finite and >= 0.
        metric: what ``accuracy`` measures, a key of :data:`METRICS` (default ``"accuracy"``).

    Raises:
        SelectInputError: any field out of range (one-line message naming the candidate and the field).
    """

    id: str
    num_instances: int
    sparsity: float
    backend: str
    precision: str
    throughput: float
    accuracy: float | None
    accuracy_source: str = "measured"
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    metric: str = "accuracy"

    def __post_init__(self) -> None:
        name = self.id if isinstance(self.id, str) and self.id else repr(self.id)
        if not isinstance(self.id, str) or not self.id:
            raise SelectInputError(f"candidate id must be a non-empty string, got {self.id!r}")
        if (
            isinstance(self.num_instances, (bool, np.bool_))
            or not isinstance(self.num_instances, numbers.Integral)
            or self.num_instances < 1
        ):
            raise SelectInputError(f"candidate {name}: num_instances must be an int >= 1, got {self.num_instances!r}")
        if not _finite(self.sparsity) or not 0.0 <= float(self.sparsity) < 1.0:
            raise SelectInputError(f"candidate {name}: sparsity must be in [0, 1), got {self.sparsity!r}")
        for attr in ("backend", "precision"):
            value = getattr(self, attr)
            if not isinstance(value, str) or not value:
                raise SelectInputError(f"candidate {name}: {attr} must be a non-empty string, got {value!r}")
        if not _finite(self.throughput) or float(self.throughput) <= 0.0:
            raise SelectInputError(
                f"candidate {name}: throughput must be a finite number > 0 (sequences/s), got {self.throughput!r}"
            )
        if self.metric not in METRICS:
            raise SelectInputError(f"candidate {name}: metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        lo, hi = metric_range(self.metric)
        if self.accuracy is not None and (not _finite(self.accuracy) or not lo <= float(self.accuracy) <= hi):
            what = "a fraction in [0, 1]" if self.metric == "accuracy" else f"a {self.metric} value in [{lo:g}, {hi:g}]"
            raise SelectInputError(f"candidate {name}: accuracy must be None or {what}, got {self.accuracy!r}")
        if self.accuracy_source not in ACCURACY_SOURCES:
            raise SelectInputError(
                f"candidate {name}: accuracy_source must be one of {', '.join(ACCURACY_SOURCES)}, "
                f"got {self.accuracy_source!r}"
            )
        for attr in ("latency_p50_ms", "latency_p99_ms"):
            value = getattr(self, attr)
            if value is not None and (not _finite(value) or float(value) < 0.0):
                raise SelectInputError(f"candidate {name}: {attr} must be None or a finite number >= 0, got {value!r}")
        # numpy scalars from the bench become plain Python numbers (stable hashing, equality and JSON)
        object.__setattr__(self, "num_instances", int(self.num_instances))
        for attr in ("sparsity", "throughput", "accuracy", "latency_p50_ms", "latency_p99_ms"):
            value = getattr(self, attr)
            if value is not None:
                object.__setattr__(self, attr, float(value))

    def describe(self) -> str:
        """One short human string, e.g. ``"c3 (N=4, s=0.600, ort/fp32, acc 0.8412, 1234.5 seq/s)"`` (``pearson``
        instead of ``acc`` for a regression head)."""
        short = "acc" if self.metric == "accuracy" else self.metric
        acc = f"{short} unknown" if self.accuracy is None else f"{short} {self.accuracy:.4f}"
        if self.accuracy is not None and self.accuracy_source != "measured":
            acc += f" [{self.accuracy_source}]"
        return (
            f"{self.id} (N={self.num_instances}, s={self.sparsity:.3f}, {self.backend}/{self.precision}, "
            f"{acc}, {self.throughput:.1f} seq/s)"
        )

    def to_dict(self) -> dict:
        """JSON-ready dict of all fields."""
        return {
            "id": self.id,
            "num_instances": self.num_instances,
            "sparsity": float(self.sparsity),
            "backend": self.backend,
            "precision": self.precision,
            "throughput": float(self.throughput),
            "accuracy": None if self.accuracy is None else float(self.accuracy),
            "accuracy_source": self.accuracy_source,
            "latency_p50_ms": self.latency_p50_ms,
            "latency_p99_ms": self.latency_p99_ms,
            "metric": self.metric,
        }


@dataclass
class Selection:
    """Result of :func:`select`.

    Attributes:
        chosen: the selected candidate, or ``None`` when none meets the budget (see :func:`raise_if_none`).
        baseline: the reference candidate the budget was measured against.
        threshold: the floor used, in the candidates' metric (within its range: a floor below the metric's lowest
            value is clamped to it, see ``clamped_from``).
        qualifying: every candidate meeting the floor, best first (the selection order).
        nearest: when none qualifies, up to 3 candidates with the highest known accuracy (closest to the
            budget), best first; empty otherwise.
        reason: one human sentence saying why ``chosen`` (or why nothing) was selected.
        budget: how the floor was set, e.g. ``{"max_accuracy_drop": 0.01}`` or ``{"min_accuracy": 0.8}``.
        unknown_accuracy: candidates that were not considered because their accuracy is ``None``.
        metric: the candidates' metric (a key of :data:`METRICS`).
        clamped_from: the floor the budget asked for when it lay below the metric's lowest value (e.g. baseline
            0.60 minus a drop of 0.90 = -0.30 for accuracy), which was then clamped to that value (every candidate
            with a known value qualifies); None otherwise.
    """

    chosen: Candidate | None
    baseline: Candidate
    threshold: float
    qualifying: list[Candidate]
    nearest: list[Candidate]
    reason: str
    budget: dict = field(default_factory=dict)
    unknown_accuracy: list[Candidate] = field(default_factory=list)
    metric: str = "accuracy"
    clamped_from: float | None = None

    def to_dict(self) -> dict:
        """JSON-ready dict (candidates by id plus the chosen and baseline candidates in full)."""
        return {
            "chosen": None if self.chosen is None else self.chosen.to_dict(),
            "baseline": self.baseline.to_dict(),
            "threshold": float(self.threshold),
            "budget": dict(self.budget),
            "qualifying": [c.id for c in self.qualifying],
            "nearest": [c.id for c in self.nearest],
            "unknown_accuracy": [c.id for c in self.unknown_accuracy],
            "reason": self.reason,
            "metric": self.metric,
            "clamped_from": self.clamped_from,
        }


# --------------------------------------------------------------------------------------------------- orderings


def _selection_key(c: Candidate) -> tuple:
    """Best first: higher throughput, then higher accuracy, then lower N, then lower sparsity, then id."""
    return (-float(c.throughput), -float(c.accuracy or 0.0), c.num_instances, float(c.sparsity), c.id)


_TIE_BREAK_WORDS = ("throughput", "higher accuracy", "lower N", "lower sparsity", "id")


def _nearest_key(c: Candidate) -> tuple:
    """Closest to an accuracy floor first: higher accuracy, then the selection order."""
    return (-float(c.accuracy),) + _selection_key(c)


def _baseline_key(c: Candidate) -> tuple:
    """Lowest sparsity, then highest accuracy (unknown last), then id."""
    acc = -1.0 if c.accuracy is None else float(c.accuracy)
    return (float(c.sparsity), -acc, c.id)


def _as_list(candidates: Iterable[Candidate]) -> list[Candidate]:
    items = list(candidates)
    if not items:
        raise SelectInputError("no candidates given")
    for c in items:
        if not isinstance(c, Candidate):
            raise SelectInputError(f"expected Candidate objects, got {type(c).__name__}")
    seen: set[str] = set()
    for c in items:
        if c.id in seen:
            raise SelectInputError(f"duplicate candidate id {c.id!r}")
        seen.add(c.id)
    return items


def _choose_baseline(items: Sequence[Candidate], baseline_id: str | None, relative: bool) -> tuple[Candidate, str]:
    """Return (baseline, note). See :func:`select` for the rule."""
    if baseline_id is not None:
        for c in items:
            if c.id == baseline_id:
                return c, ""
        raise SelectInputError(
            f"baseline id {baseline_id!r} is not a candidate (known: {', '.join(sorted(c.id for c in items))})"
        )
    singles = [c for c in items if c.num_instances == 1]
    if singles:
        return min(singles, key=_baseline_key), ""
    if relative:
        raise SelectInputError(
            "max_accuracy_drop needs a baseline: no candidate has N=1; pass baseline_id or use min_accuracy"
        )
    n_min = min(c.num_instances for c in items)
    base = min((c for c in items if c.num_instances == n_min), key=_baseline_key)
    return base, f" (no N=1 candidate: baseline is the smallest N={n_min})"


# --------------------------------------------------------------------------------------------------- public API


def select(
    candidates: Iterable[Candidate],
    *,
    max_accuracy_drop: float | None = None,
    min_accuracy: float | None = None,
    baseline_id: str | None = None,
) -> Selection:
    """Choose the highest-throughput candidate whose accuracy meets the budget (PruMUX section 5; docs/report.md,
    `selection`).

    Baseline: the candidate ``baseline_id`` if given; otherwise the candidate with N == 1 and the lowest
    sparsity (ties: highest accuracy, then id). Without any N == 1 candidate, ``min_accuracy`` falls back to the
    smallest N (same tie-breaks, noted in ``reason``); ``max_accuracy_drop`` then needs ``baseline_id``.

    Budget (exactly one), in the candidates' metric (they must share one, :data:`METRICS`): ``max_accuracy_drop``
    is an *absolute* drop on that scale, floor = ``baseline.accuracy - max_accuracy_drop``; ``min_accuracy`` is
    the floor itself. A floor below the metric's lowest value (0 for accuracy: a drop larger than the baseline's
    accuracy) is clamped to that value — the same candidates qualify — and reported (``clamped_from`` and the
    reason); it is never an error. A candidate qualifies when ``accuracy >= floor - ACCURACY_TOLERANCE``.
    Candidates with ``accuracy is None`` never qualify.

    Choice: the highest throughput among qualifying candidates; ties broken by higher accuracy, then lower N,
    then lower sparsity, then id (lexicographic) — fully deterministic and independent of input order.

    When nothing qualifies, ``chosen`` is ``None`` and ``nearest`` holds up to 3 candidates with the highest
    known accuracy; call :func:`raise_if_none` to turn that into :class:`NoCandidateError` (exit 5).

    Args:
        candidates: non-empty iterable of :class:`Candidate` with unique ids.
        max_accuracy_drop: finite, >= 0, in the metric's units (0.01 = one accuracy point).
        min_accuracy: finite, within the metric's range ([0, 1] for accuracy, [-1, 1] for a correlation).
        baseline_id: id of the reference candidate.

    Returns:
        :class:`Selection`.

    Raises:
        SelectInputError (a ValueError, exit 2): not exactly one budget given, budget out of range, no/duplicate
            candidates, candidates of different metrics, unknown ``baseline_id``, baseline without accuracy under
            ``max_accuracy_drop``.
    """
    items = _as_list(candidates)
    if (max_accuracy_drop is None) == (min_accuracy is None):
        raise SelectInputError("give exactly one of max_accuracy_drop and min_accuracy")
    relative = max_accuracy_drop is not None
    metrics = sorted({c.metric for c in items})
    if len(metrics) > 1:
        raise SelectInputError(f"candidates measure different metrics ({', '.join(metrics)}): select among "
                               "candidates of one task")
    metric = metrics[0]
    lo, hi = metric_range(metric)
    name = METRICS[metric][2]
    baseline, base_note = _choose_baseline(items, baseline_id, relative)
    clamped_from = None

    if relative:
        if not _finite(max_accuracy_drop) or float(max_accuracy_drop) < 0.0:
            raise SelectInputError(f"max_accuracy_drop must be a finite number >= 0, got {max_accuracy_drop!r}")
        if baseline.accuracy is None:
            raise SelectInputError(
                f"baseline {baseline.id!r} has no accuracy, so max_accuracy_drop cannot be applied; "
                "use min_accuracy or a baseline with a known accuracy"
            )
        threshold = float(baseline.accuracy) - float(max_accuracy_drop)
        budget = {"max_accuracy_drop": float(max_accuracy_drop)}
        clamp_text = ""
        if threshold < lo:
            clamped_from, threshold = threshold, lo
            clamp_text = f" = {clamped_from:.4f}, below the lowest possible {name}, clamped to {lo:g}"
        budget_text = (
            f"{name} >= {threshold:.4f} (baseline {baseline.id} {baseline.accuracy:.4f} minus "
            f"{float(max_accuracy_drop):.4f}{clamp_text}{base_note})"
        )
    else:
        if not _finite(min_accuracy) or not lo <= float(min_accuracy) <= hi:
            what = "a fraction in [0, 1]" if metric == "accuracy" else f"in [{lo:g}, {hi:g}] for {name}"
            raise SelectInputError(f"min_accuracy must be {what}, got {min_accuracy!r}")
        threshold = float(min_accuracy)
        budget = {"min_accuracy": threshold}
        budget_text = f"{name} >= {threshold:.4f}"

    known = [c for c in items if c.accuracy is not None]
    unknown = sorted((c for c in items if c.accuracy is None), key=lambda c: c.id)
    qualifying = sorted(
        (c for c in known if float(c.accuracy) >= threshold - ACCURACY_TOLERANCE), key=_selection_key
    )
    unknown_text = (
        f"; {len(unknown)} candidate(s) with unknown accuracy ({', '.join(c.id for c in unknown)}) "
        "were not considered"
        if unknown
        else ""
    )

    if qualifying:
        chosen = qualifying[0]
        tie_text = ""
        if len(qualifying) > 1:
            a, b = _selection_key(chosen), _selection_key(qualifying[1])
            first_diff = next(i for i in range(len(a)) if a[i] != b[i])
            if first_diff > 0:
                tie_text = f", tie on throughput with {qualifying[1].id} broken by {_TIE_BREAK_WORDS[first_diff]}"
        source_text = (
            f", accuracy {chosen.accuracy_source} rather than measured" if chosen.accuracy_source != "measured" else ""
        )
        reason = (
            f"{chosen.describe()} has the highest throughput of the {len(qualifying)} of {len(items)} candidates "
            f"with {budget_text}{tie_text}{source_text}{unknown_text}."
        )
        nearest: list[Candidate] = []
    else:
        chosen = None
        nearest = sorted(known, key=_nearest_key)[:3]
        closest = "; ".join(c.describe() for c in nearest) if nearest else "none has a known accuracy"
        reason = (
            f"No candidate of {len(items)} reaches {budget_text}; closest: {closest}{unknown_text}."
        )

    return Selection(
        chosen=chosen,
        baseline=baseline,
        threshold=threshold,
        qualifying=qualifying,
        nearest=nearest,
        reason=reason,
        budget=budget,
        unknown_accuracy=unknown,
        metric=metric,
        clamped_from=clamped_from,
    )


def raise_if_none(selection: Selection) -> Candidate:
    """Return ``selection.chosen``; if it is ``None`` raise :class:`NoCandidateError` (exit 5).

    The one-line message states the accuracy floor and lists the nearest candidates (id, N, s, accuracy,
    throughput), so the user can relax the budget knowingly.

    Raises:
        NoCandidateError: no candidate met the budget.
    """
    if selection.chosen is not None:
        return selection.chosen
    if selection.nearest:
        listed = "; ".join(c.describe() for c in selection.nearest)
    else:
        listed = "none (no candidate has a known accuracy)"
    name = METRICS.get(selection.metric, METRICS["accuracy"])[2]
    raise NoCandidateError(
        f"no candidate meets the accuracy budget ({name} >= {selection.threshold:.4f}, baseline "
        f"{selection.baseline.id}); closest: {listed}"
    )


def pareto_front(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Candidates not dominated in (throughput, accuracy), both maximised.

    A candidate is dominated when another has throughput >= and accuracy >= with at least one strictly greater.
    Candidates with unknown accuracy are left out; exact duplicates in both values are all kept.

    Returns:
        The front, sorted by throughput ascending (so accuracy descending), ties by id — the order in which a
        front line is drawn on an accuracy-vs-throughput plot. Empty when no candidate has a known accuracy.

    Raises:
        SelectInputError: a non-Candidate item or duplicate ids.
    """
    items = list(candidates)
    if items:
        items = _as_list(items)
    known = [c for c in items if c.accuracy is not None]
    front = []
    for c in known:
        dominated = any(
            o.throughput >= c.throughput
            and o.accuracy >= c.accuracy
            and (o.throughput > c.throughput or o.accuracy > c.accuracy)
            for o in known
        )
        if not dominated:
            front.append(c)
    return sorted(front, key=lambda c: (float(c.throughput), -float(c.accuracy), c.id))
