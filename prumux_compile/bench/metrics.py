"""Accuracy and fidelity metrics, pure numpy.

Definitions follow the GLUE metrics upstream reports (docs/checkpoint-formats.md section 6: accuracy,
and binary F1 for QQP/MRPC, as scikit-learn's ``f1_score`` used by HF's ``glue`` metric computes it; for the
one-output regression head of STS-B, Pearson's r and Spearman's rho, as ``scipy.stats.pearsonr`` /
``spearmanr`` used by that metric compute them).

Predictions (``pred``) of classifiers are class ids, int array [n], or logits [n, C] with C >= 2, which are
reduced with argmax over the last axis (ties go to the lowest class id, as ``numpy.argmax``). A head with one
output (C = 1) is a regression (HF ``BertForSequenceClassification`` with ``num_labels == 1``): its outputs are
scores, compared by correlation, never by argmax.
"""
from __future__ import annotations

import numpy as np

from prumux_compile.errors import InputError

__all__ = ["argmax", "accuracy", "f1_binary", "agreement", "max_abs_diff", "pearson", "spearman", "average_ranks",
           "chance_accuracy", "below_chance", "best_relabelling", "label_order_warning"]


def argmax(logits) -> np.ndarray:
    """Class ids of logits: int64 [n] from a float array [n, C] (C >= 2; ties -> lowest id).

    Raises:
        InputError: ``logits`` is not 2-D with C >= 2 (a [n, 1] regression output has no argmax).
    """
    arr = np.asarray(logits)
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise InputError(f"metrics: logits must have shape [n, C] with C >= 2, got {arr.shape}")
    return np.argmax(arr, axis=-1).astype(np.int64)


def _classes(pred, name: str) -> np.ndarray:
    arr = np.asarray(pred)
    if arr.ndim == 2:
        return argmax(arr)
    if arr.ndim != 1:
        raise InputError(f"metrics: {name} must be class ids [n] or logits [n, C], got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not (np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
            raise InputError(f"metrics: {name} must hold integer class ids, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _pair(a, b, name_a: str, name_b: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = _classes(a, name_a), _classes(b, name_b)
    if x.shape != y.shape:
        raise InputError(f"metrics: {name_a} has {x.shape[0]} rows but {name_b} has {y.shape[0]}")
    if x.size == 0:
        raise InputError(f"metrics: {name_a} and {name_b} are empty")
    return x, y


def accuracy(pred, labels) -> float:
    """Fraction of rows whose predicted class equals the label, in [0, 1].

    Args:
        pred: class ids int [n] or logits float [n, C].
        labels: class ids int [n].

    Raises:
        InputError: empty inputs, different row counts, or non-integer ids.
    """
    p, y = _pair(pred, labels, "pred", "labels")
    return float(np.mean(p == y))


def f1_binary(pred, labels, positive: int = 1) -> float:
    """Binary F1 of class ``positive``: ``2 TP / (2 TP + FP + FN)``, in [0, 1].

    Returns 0.0 when there is no positive row in either ``pred`` or ``labels`` (TP + FP + FN = 0),
    as scikit-learn's ``f1_score`` does by default.

    Args:
        pred: class ids int [n] or logits float [n, C].
        labels: class ids int [n].
        positive: the class id counted as positive.

    Raises:
        InputError: empty inputs, different row counts, or non-integer ids.
    """
    p, y = _pair(pred, labels, "pred", "labels")
    tp = int(np.sum((p == positive) & (y == positive)))
    fp = int(np.sum((p == positive) & (y != positive)))
    fn = int(np.sum((p != positive) & (y == positive)))
    denom = 2 * tp + fp + fn
    return 0.0 if denom == 0 else 2.0 * tp / denom


def agreement(pred_a, pred_b) -> float:
    """Fraction of rows where two predictions choose the same class (e.g. fp16 vs fp32 argmax), in [0, 1].

    Args:
        pred_a, pred_b: class ids int [n] or logits float [n, C] (each reduced by argmax).

    Raises:
        InputError: empty inputs, different row counts, or non-integer ids.
    """
    a, b = _pair(pred_a, pred_b, "pred_a", "pred_b")
    return float(np.mean(a == b))


def max_abs_diff(a, b) -> float:
    """Largest absolute element-wise difference, computed in float64.

    Shapes must be equal (no broadcasting). Empty arrays give 0.0. A NaN in either input, or an
    infinity not matched by the same infinity at the same position, gives ``inf`` so that a check
    ``max_abs_diff(a, b) <= tol`` fails (a plain ``np.max`` would return NaN, and ``nan > tol`` is False).

    Raises:
        InputError: the shapes differ.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise InputError(f"metrics: max_abs_diff needs equal shapes, got {x.shape} and {y.shape}")
    if x.size == 0:
        return 0.0
    if np.isnan(x).any() or np.isnan(y).any():
        return float("inf")
    with np.errstate(invalid="ignore"):  # inf - inf
        diff = np.abs(x - y)
    diff[x == y] = 0.0  # equal infinities compare equal; their difference is NaN
    return float(diff.max())


# --------------------------------------------------------------------------------------------------
# regression heads (one output): correlation


def _scores(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise InputError(f"metrics: {name} must be scores [n] or a one-output head's [n, 1], got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"metrics: {name} holds NaN or infinite values")
    return arr


def _score_pair(a, b, name_a: str, name_b: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = _scores(a, name_a), _scores(b, name_b)
    if x.shape != y.shape:
        raise InputError(f"metrics: {name_a} has {x.shape[0]} rows but {name_b} has {y.shape[0]}")
    if x.size < 2:
        raise InputError(f"metrics: a correlation needs at least 2 rows, got {x.size}")
    return x, y


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    dx, dy = x - x.mean(), y - y.mean()
    denom = np.sqrt(np.dot(dx, dx) * np.dot(dy, dy))
    if denom == 0.0:
        return float("nan")
    return float(np.clip(np.dot(dx, dy) / denom, -1.0, 1.0))


def pearson(pred, target) -> float:
    """Pearson's correlation coefficient r in [-1, 1] (``sum(dx*dy) / sqrt(sum(dx^2) * sum(dy^2))`` with
    ``dx = x - mean(x)``, in float64; the formula of ``scipy.stats.pearsonr``).

    Args:
        pred, target: scores float [n] or a one-output head's [n, 1], n >= 2, finite.

    Returns:
        r, or NaN when either input is constant (r is undefined there).

    Raises:
        InputError: different row counts, fewer than 2 rows, a non-finite value, or a wider output.
    """
    x, y = _score_pair(pred, target, "pred", "target")
    return _corr(x, y)


def average_ranks(x) -> np.ndarray:
    """1-based ranks of ``x`` [n], ties sharing the mean of their ranks (``scipy.stats.rankdata(method="average")``).

    Example: ``[10, 20, 20, 5]`` -> ``[2, 3.5, 3.5, 1]``.
    """
    arr = np.asarray(x, dtype=np.float64).ravel()
    _, inverse, counts = np.unique(arr, return_inverse=True, return_counts=True)
    last = np.cumsum(counts).astype(np.float64)  # rank of the last member of each group of equal values
    first = last - counts + 1.0
    return ((first + last) / 2.0)[inverse]


def spearman(pred, target) -> float:
    """Spearman's rank correlation rho in [-1, 1]: Pearson's r of the average ranks (:func:`average_ranks`).

    Returns NaN when either input is constant. Raises as :func:`pearson`.
    """
    x, y = _score_pair(pred, target, "pred", "target")
    return _corr(average_ranks(x), average_ranks(y))


# --------------------------------------------------------------------------------------------------
# label order: accuracy below chance (field fault F23 in docs/field-faults.md)


def chance_accuracy(num_classes: int) -> float:
    """Expected accuracy of a uniformly random guess among C classes, ``1/C`` (whatever the label distribution)."""
    if num_classes < 1:
        raise InputError(f"metrics: num_classes must be >= 1, got {num_classes}")
    return 1.0 / num_classes


def below_chance(acc: float, n: int, num_classes: int, z: float = 3.0) -> bool:
    """True when ``acc`` on ``n`` examples is far below chance: ``acc < 1/C - z * sqrt(p (1 - p) / n)``, p = 1/C.

    ``sqrt(p (1 - p) / n)`` is the standard deviation of a random guesser's accuracy (binomial), so a model at
    chance is flagged with probability below 0.2% for z = 3 (normal approximation); a trained model whose labels
    were permuted scores near 0 and is flagged from a few dozen examples on.
    """
    p = chance_accuracy(num_classes)
    if n < 1 or num_classes < 2:
        return False
    return acc < p - z * float(np.sqrt(p * (1.0 - p) / n))


def best_relabelling(pred, labels, num_classes: int, max_classes: int = 8) -> tuple[tuple[int, ...], float] | None:
    """The relabelling of predicted classes that maximises accuracy, and that accuracy.

    Args:
        pred: class ids int [n] or logits [n, C].
        labels: class ids int [n].
        num_classes: C.
        max_classes: above this C (C! permutations) return None.

    Returns:
        ``(perm, acc)`` where predicted class ``k`` read as label ``perm[k]`` gives accuracy ``acc``; None when
        C > ``max_classes``.
    """
    import itertools

    p, y = _pair(pred, labels, "pred", "labels")
    if num_classes > max_classes:
        return None
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)  # conf[predicted, label]
    np.add.at(conf, (np.clip(p, 0, num_classes - 1), np.clip(y, 0, num_classes - 1)), 1)
    best, best_hits = tuple(range(num_classes)), int(np.trace(conf))
    for perm in itertools.permutations(range(num_classes)):
        hits = int(conf[np.arange(num_classes), perm].sum())
        if hits > best_hits:
            best, best_hits = tuple(perm), hits
    return best, best_hits / p.size


def label_order_warning(pred, labels, num_classes: int, *, id2label: dict | None = None,
                        source: str = "the evaluation labels") -> str | None:
    """A one-line warning when accuracy is far below chance (:func:`below_chance`), else None.

    It names the likely cause — the labels are in another order than the checkpoint's ``id2label`` — and, for
    up to 8 classes, the relabelling that would fit best and its accuracy.
    """
    p, y = _pair(pred, labels, "pred", "labels")
    acc = float(np.mean(p == y))
    if not below_chance(acc, p.size, num_classes):
        return None
    msg = (f"accuracy {acc:.4f} on {p.size} examples is far below chance (1/{num_classes} = "
           f"{chance_accuracy(num_classes):.4f}): {source} are likely in another order than the checkpoint's "
           f"id2label" + (f" ({', '.join(f'{k}={v}' for k, v in sorted(id2label.items()))})" if id2label else ""))
    relabel = best_relabelling(p, y, num_classes)
    if relabel is not None and relabel[0] != tuple(range(num_classes)):
        perm, better = relabel
        moves = ", ".join(f"{k}->{v}" for k, v in enumerate(perm) if k != v)
        msg += (f"; reading predicted class {moves} as the label gives {better:.4f}: fix the labels of the file "
                f"or id2label/label2id in config.json")
    else:
        msg += "; check the labels of the file and id2label/label2id in config.json"
    return msg
