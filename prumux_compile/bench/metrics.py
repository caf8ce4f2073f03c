"""Accuracy and fidelity metrics, pure numpy.

Definitions follow the GLUE metrics upstream reports (docs/checkpoint-formats.md section 6: accuracy,
and binary F1 for QQP/MRPC, as scikit-learn's ``f1_score`` used by HF's ``glue`` metric computes it).

Predictions (``pred``) are class ids, int array [n], or logits [n, C] with C >= 2, which are reduced
with argmax over the last axis (ties go to the lowest class id, as ``numpy.argmax``).
"""
from __future__ import annotations

import numpy as np

from prumux_compile.errors import InputError

__all__ = ["argmax", "accuracy", "f1_binary", "agreement", "max_abs_diff"]


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
