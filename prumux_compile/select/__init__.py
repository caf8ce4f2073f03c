"""Auto-PruMUX (PruMUX, Su et al. 2023, section 5): choose the best measured candidate for an accuracy budget and
predict the (N, s) configuration to train next. Pure Python + numpy.

- :func:`select`, :func:`raise_if_none`, :func:`pareto_front` — measured candidates (:mod:`.auto_prumux`).
- :func:`predict` — the accuracy / throughput meta-model with leave-one-out errors (:mod:`.meta_model`);
  :func:`predict_with_precision` adds precision as a third axis (an accuracy offset and a throughput factor per
  precision on top of it).
"""
from prumux_compile.select.auto_prumux import (
    ACCURACY_SOURCES,
    ACCURACY_TOLERANCE,
    METRICS,
    Candidate,
    Selection,
    SelectInputError,
    pareto_front,
    raise_if_none,
    metric_range,
    select,
)
from prumux_compile.select.meta_model import (
    ACCURACY_TERMS,
    THROUGHPUT_EPS,
    THROUGHPUT_TERMS,
    FitReport,
    PrecisionPrediction,
    Prediction,
    predict,
    predict_with_precision,
)

__all__ = [
    "ACCURACY_SOURCES",
    "ACCURACY_TERMS",
    "ACCURACY_TOLERANCE",
    "THROUGHPUT_EPS",
    "THROUGHPUT_TERMS",
    "Candidate",
    "FitReport",
    "METRICS",
    "Prediction",
    "PrecisionPrediction",
    "Selection",
    "SelectInputError",
    "pareto_front",
    "predict",
    "predict_with_precision",
    "metric_range",
    "raise_if_none",
    "select",
]
