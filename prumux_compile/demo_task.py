"""A small, deterministic demo task for the demo grid: templated binary sentiment, and a linear probe.

The demo grid (:mod:`prumux_compile.demo`) is built from the real all-MiniLM-L6-v2 trunk with
untrained classifier heads, so accuracy measured on any data would be noise. This module gives those
checkpoints a task they can actually solve, honestly and cheaply:

* :func:`make_dataset`: templated English sentences ``[prefix] subject verb [not] phrase [tail].``
  labelled ``"positive"`` / ``"negative"`` (the demo checkpoints' ``id2label``, :data:`LABELS`). A
  positive phrase gives ``positive``; a negative phrase, or a *negated* positive phrase (``"was not
  good"``), gives ``negative``. The train and eval splits are drawn with a seeded ``random.Random``,
  are balanced (half of each label) and share no sentence.
* :func:`probe_features`: the classifier's input (pooler output for N = 1, demultiplexer output for
  N > 1) computed with the project's compiled model (``checkpoint.load`` -> ``compile_ir(.., "all")``
  -> classifier replaced by the identity -> ``kernels.build_module``).
* :func:`fit_ridge`: a linear probe fitted in closed form (ridge regression on +/-1 one-hot targets,
  intercept unpenalised); :func:`choose_alpha` picks its penalty by cross-validation among the penalties
  whose logits stay insensitive to the features' fp32 rounding (:func:`logit_rounding`,
  :data:`LOGIT_ROUNDING_BUDGET`), so that fitted checkpoints still pass the project's fidelity checks;
  :func:`fit_probe` does all of it for one checkpoint, :func:`write_classifier` stores the fitted
  ``classifier.weight`` / ``classifier.bias`` in its ``pytorch_model.bin``.

Nothing is trained but the classifier: the trunk, multiplexer and demultiplexer keep their values,
so the accuracy of a multiplexed checkpoint measures how much its (untrained) mux/demux keeps of the
sentence features, which is the quantity the demo budgets are meant to trade.
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from prumux_compile.errors import CheckpointError, InputError

if TYPE_CHECKING:  # pragma: no cover
    from prumux_compile.checkpoint import RawCheckpoint

__all__ = [
    "LABELS", "TRAIN_SIZE", "EVAL_SIZE", "TASK_SEED", "SHUFFLE_SEED", "RIDGE_ALPHAS", "CV_FOLDS",
    "LOGIT_ROUNDING_BUDGET", "ROUNDING_SAMPLE_ROWS", "Example", "ProbeFit", "make_dataset", "write_eval_tsv",
    "probe_features", "fit_ridge", "choose_alpha", "logit_rounding", "fit_probe", "write_classifier",
    "task_description", "torch_threads",
]

#: Class names in class-id order (the demo checkpoints' ``id2label``: 0 negative, 1 positive).
LABELS = ("negative", "positive")
TRAIN_SIZE = 600
EVAL_SIZE = 256
#: Seed of the data set draw (train and eval splits).
TASK_SEED = 0
#: Seed of the train-set shuffle that decides which sentences share a mux group during fitting.
SHUFFLE_SEED = 1
#: Ridge penalties tried, relative to n times the mean feature variance (see :func:`fit_ridge`): 1e-6 ... 10
#: in half decades. :func:`choose_alpha` keeps the one with the best cross-validated train accuracy among
#: those within the rounding budget.
RIDGE_ALPHAS = tuple(float(f"{10 ** (k / 2):.3g}") for k in range(-12, 3))
CV_FOLDS = 5
#: Largest allowed fp32 rounding effect on the probe's logits, :func:`logit_rounding` (absolute): a tenth of
#: the 1e-4 fp32 fidelity tolerance of DESIGN.md ("Fidelity"), so that every engine of a fitted demo
#: checkpoint still validates against the reference. The demo features are weakly informative (N = 1:
#: MiniLM's pooler output varies little between sentences; N > 1: untrained demux), so the best-scoring
#: probes have large weights: unconstrained, the N = 2 and N = 5 probes moved the ONNX Runtime logits by
#: 1.1e-4 to 2.1e-4 from the fp32 reference and failed validation; within this budget every candidate of
#: the default grid validated (largest difference 1.6e-5).
LOGIT_ROUNDING_BUDGET = 1e-5
#: Train rows (rounded up to a multiple of N) whose features are also computed in float64 to measure the
#: fp32 rounding of the features (:func:`fit_probe`).
ROUNDING_SAMPLE_ROWS = 40

SUBJECTS = (
    "the film", "this movie", "the restaurant", "this hotel", "the service", "our waiter", "the soundtrack",
    "this book", "the concert", "the new phone", "the game", "the museum", "the lecture", "this album",
    "the show", "the food", "the play", "the trip", "the staff", "the sequel",
)
POSITIVE = (
    "good", "great", "excellent", "wonderful", "fantastic", "delightful", "brilliant", "superb", "enjoyable",
    "charming", "impressive", "lovely", "pleasant", "outstanding", "amazing", "a real pleasure",
    "worth every penny", "a joy from start to end", "beautifully done", "top notch", "really fun",
    "heartwarming", "well made", "perfect", "memorable",
)
NEGATIVE = (
    "bad", "terrible", "awful", "boring", "dull", "disappointing", "horrible", "mediocre", "painful",
    "dreadful", "a waste of time", "a waste of money", "poorly made", "annoying", "tedious", "unpleasant",
    "forgettable", "a complete mess", "overpriced", "bland", "frustrating", "sloppy", "lifeless",
    "a total letdown", "hard to sit through",
)
#: (affirmative verb, negated verb).
VERBS = (
    ("was", "was not"), ("is", "is not"), ("seemed", "did not seem"), ("felt", "did not feel"),
    ("turned out to be", "did not turn out to be"), ("has been", "has not been"),
)
PREFIXES = ("", "honestly, ", "i think ", "we all agreed that ", "to me ")
TAILS = ("", " overall", " in my opinion", " to be honest", " this time", " if you ask me", " as expected",
         " for the price")
#: Fraction of negative examples written as a negated positive phrase ("was not good").
NEGATED_FRACTION = 0.4


@dataclass(frozen=True)
class Example:
    """One sentence and its label name (one of :data:`LABELS`)."""

    sentence: str
    label: str


@dataclass
class ProbeFit:
    """A fitted linear probe.

    Attributes:
        weight: float32 [C, D] (C = number of labels, D = classifier input width).
        bias: float32 [C].
        train_accuracy: accuracy of ``argmax(features @ weight.T + bias)`` on the train split, in [0, 1].
        num_train: train examples used.
        ridge_alpha: the relative ridge penalty chosen by :func:`choose_alpha`.
        ridge_lambda: the absolute ridge penalty it gives (see :func:`fit_ridge`).
        cv_accuracy: mean held-out accuracy of ``ridge_alpha`` in the cross-validation, in [0, 1].
        best_cv_accuracy: the best cross-validated accuracy of any alpha, within the rounding budget or not
            (what the budget costs: ``best_cv_accuracy - cv_accuracy``).
        logit_rounding: :func:`logit_rounding` of ``weight`` on the measured feature rounding (absolute).
        features: float32 [num_train, D], the features the probe was fitted on (shuffled train order).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    train_accuracy: float
    num_train: int
    ridge_alpha: float
    ridge_lambda: float
    cv_accuracy: float
    best_cv_accuracy: float
    logit_rounding: float
    features: torch.Tensor | None = field(repr=False, default=None)

    def to_json(self) -> dict:
        """Plain-JSON summary (no tensors)."""
        return {"train_accuracy": self.train_accuracy, "cv_accuracy": self.cv_accuracy,
                "best_cv_accuracy": self.best_cv_accuracy, "num_train": self.num_train,
                "ridge_alpha": self.ridge_alpha, "ridge_lambda": self.ridge_lambda,
                "logit_rounding": self.logit_rounding}


def _sentence(rng: random.Random, positive: bool) -> str:
    negated = (not positive) and rng.random() < NEGATED_FRACTION
    phrase = rng.choice(POSITIVE if positive or negated else NEGATIVE)
    verb = rng.choice(VERBS)[1 if negated else 0]
    return f"{rng.choice(PREFIXES)}{rng.choice(SUBJECTS)} {verb} {phrase}{rng.choice(TAILS)}."


def make_dataset(train_size: int = TRAIN_SIZE, eval_size: int = EVAL_SIZE,
                 seed: int = TASK_SEED) -> tuple[list[Example], list[Example]]:
    """The templated sentiment data set: ``(train, eval)`` lists of :class:`Example`.

    Every sentence is ``[prefix] subject verb phrase [tail].`` (lower case, BERT-uncased friendly).
    Label rule: a phrase of :data:`POSITIVE` with an affirmative verb -> ``"positive"``; a phrase of
    :data:`NEGATIVE` -> ``"negative"``; a phrase of :data:`POSITIVE` with a negated verb (``"was not"``,
    ``"did not seem"``) -> ``"negative"`` (:data:`NEGATED_FRACTION` of the negatives).
    Unique sentences are drawn per label with ``random.Random(seed)``; each split holds exactly half of
    each label, no sentence is in both, and each split is shuffled (seeded), so consecutive rows (one mux
    group of the driver's evaluation) mix labels.

    Args:
        train_size, eval_size: even numbers >= 2.
        seed: seed of the draw.

    Returns:
        (train, eval) of ``train_size`` and ``eval_size`` examples.

    Raises:
        InputError: odd or too small sizes, or more sentences asked for than the templates can make.
    """
    for name, size in (("train_size", train_size), ("eval_size", eval_size)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 2 or size % 2:
            raise InputError(f"{name} must be an even integer >= 2, got {size!r}")
    per_label = (train_size + eval_size) // 2
    # positives: PREFIXES x SUBJECTS x VERBS x POSITIVE x TAILS distinct sentences (far more than needed)
    capacity = len(PREFIXES) * len(SUBJECTS) * len(VERBS) * len(POSITIVE) * len(TAILS)
    if per_label > capacity // 4:
        raise InputError(f"{train_size + eval_size} sentences asked for; the templates support at most "
                         f"{2 * (capacity // 4)}")
    rng = random.Random(seed)
    drawn: dict[bool, list[str]] = {True: [], False: []}
    seen: set[str] = set()
    for positive in (True, False):
        while len(drawn[positive]) < per_label:
            s = _sentence(rng, positive)
            if s not in seen:
                seen.add(s)
                drawn[positive].append(s)
    half_eval = eval_size // 2
    train = [Example(s, LABELS[1]) for s in drawn[True][half_eval:]]
    train += [Example(s, LABELS[0]) for s in drawn[False][half_eval:]]
    evals = [Example(s, LABELS[1]) for s in drawn[True][:half_eval]]
    evals += [Example(s, LABELS[0]) for s in drawn[False][:half_eval]]
    rng.shuffle(train)
    rng.shuffle(evals)
    return train, evals


def write_eval_tsv(path: str | Path, examples: list[Example] | None = None) -> Path:
    """Write ``examples`` (default: the eval split of :func:`make_dataset`) as a GLUE-style TSV (UTF-8, no
    quoting, ``\n`` line ends) with the header ``sentence<TAB>label`` and label *names* (read by
    :func:`prumux_compile.bench.data.load_eval_data`).

    Raises:
        InputError: a sentence contains a tab or a newline, or the file cannot be written.
    """
    if examples is None:
        examples = make_dataset()[1]
    p = Path(path)
    for ex in examples:
        if any(c in ex.sentence + ex.label for c in "\t\r\n"):
            raise InputError(f"eval example {ex.sentence!r} / {ex.label!r} contains a tab or newline")
    text = "sentence\tlabel\n" + "".join(f"{ex.sentence}\t{ex.label}\n" for ex in examples)
    try:
        p.write_text(text, encoding="utf-8", newline="")
    except OSError as exc:
        raise InputError(f"{p}: cannot write the eval TSV ({exc.strerror})") from None
    return p


def task_description() -> dict:
    """JSON-ready description of the task and the probe (for ``grid.json``)."""
    return {
        "name": "templated-sentiment",
        "labels": list(LABELS),
        "train_size": TRAIN_SIZE,
        "eval_size": EVAL_SIZE,
        "seed": TASK_SEED,
        "negated_fraction_of_negatives": NEGATED_FRACTION,
        "probe": ("classifier only, fitted by ridge regression on the frozen classifier input (pooler output for "
                  "N = 1, demux output for N > 1) from the compiled model; targets +/-1 one-hot, intercept "
                  "unpenalised, lambda = alpha * trace(Xc^T Xc) / D with alpha chosen by "
                  f"{CV_FOLDS}-fold cross-validation on the train split among {list(RIDGE_ALPHAS)} whose "
                  f"fp32 logit rounding stays <= {LOGIT_ROUNDING_BUDGET:g}; train rows shuffled with seed "
                  f"{SHUFFLE_SEED}, N consecutive rows per mux group"),
    }


# ------------------------------------------------------------------------------------------------
# Probe


def _feature_model(raw: "RawCheckpoint", seq_len: int):
    """(compiled model with identity classifier, tokenizer, N) of a checkpoint (see :func:`probe_features`)."""
    from transformers import AutoTokenizer

    from prumux_compile.bench.data import find_tokenizer_dir
    from prumux_compile.checkpoint import from_raw
    from prumux_compile.kernels import build_module
    from prumux_compile.passes import compile_ir

    ir, _ = compile_ir(from_raw(raw, seq_len=seq_len), "all")
    width = int(ir.classifier[0].shape[1])
    ir.classifier = (torch.eye(width), torch.zeros(width))
    tok_dir = find_tokenizer_dir(raw.path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    except Exception as exc:  # transformers raises many types with multi-line messages
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot load the tokenizer in {tok_dir}: {first}") from None
    return build_module(ir), tokenizer, ir.num_instances


def _run_features(model, tokenizer, n: int, sentences: list[str], seq_len: int, batch_rows: int) -> torch.Tensor:
    enc = tokenizer(list(sentences), padding="max_length" if n > 1 else "longest", max_length=seq_len,
                    truncation=True, return_tensors="pt", return_token_type_ids=True, return_attention_mask=True)
    step = max(n, (batch_rows // n) * n)
    out = []
    with torch.inference_mode():
        for i in range(0, len(sentences), step):
            sl = slice(i, i + step)
            out.append(model(enc["input_ids"][sl], enc["attention_mask"][sl], enc["token_type_ids"][sl]))
    return torch.cat(out)


def probe_features(ckpt: "str | Path | RawCheckpoint", sentences: list[str], *, seq_len: int = 128,
                   batch_rows: int = 64, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Classifier inputs of ``sentences`` computed by the compiled model of a checkpoint.

    The checkpoint is loaded as :func:`prumux_compile.checkpoint.load` does (``from_raw(read_raw(dir))``),
    compiled with every pass (:func:`prumux_compile.passes.compile_ir`, stage ``"all"``) and its classifier
    replaced by the identity ``(eye(D), zeros(D))``, so :func:`prumux_compile.kernels.build_module` returns
    the features as logits. Sentences are tokenized with the checkpoint's own tokenizer (``AutoTokenizer``,
    ``local_files_only=True``, ``truncation=True``, ``max_length=seq_len``; spec section 6).

    * N > 1: ``padding="max_length"`` (the multiplexed encoder attends every position, spec Q2, so the
      padded length is part of the model). Row r is instance ``r mod N`` of mux group ``r div N`` (spec
      section 2.1): the caller's order decides which sentences share a group; every batch holds a
      multiple of N rows.
    * N = 1: padded to the longest sentence of ``sentences`` instead of ``seq_len``: BERT's additive
      mask of -10000 (spec section 2.8) gives [PAD] keys a softmax weight that underflows to exactly 0
      in float32, so the features equal those at ``seq_len`` up to summation-order rounding, at a
      fraction of the cost.

    Args:
        ckpt: checkpoint directory (any family), or its :class:`~prumux_compile.checkpoint.RawCheckpoint`;
            the tokenizer sits in the directory or its parent.
        sentences: the texts, in mux-group order.
        seq_len: compiled / padded length in tokens.
        batch_rows: rows per forward call (rounded down to a multiple of N, at least N).
        dtype: ``torch.float32`` (the compiled model as built) or ``torch.float64`` (the same model with
            every parameter cast, to measure fp32 rounding).

    Returns:
        [len(sentences), D] of ``dtype`` (D = 384 for the demo grid).

    Raises:
        InputError: no sentences, or another dtype.
        CheckpointError: unreadable checkpoint or tokenizer.
    """
    from prumux_compile.checkpoint import RawCheckpoint, read_raw

    if not sentences:
        raise InputError("probe_features: no sentences")
    if dtype not in (torch.float32, torch.float64):
        raise InputError(f"probe_features: dtype must be torch.float32 or torch.float64, got {dtype}")
    raw = ckpt if isinstance(ckpt, RawCheckpoint) else read_raw(ckpt)
    model, tokenizer, n = _feature_model(raw, seq_len)
    return _run_features(model.to(dtype), tokenizer, n, sentences, seq_len, batch_rows).to(dtype)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)`` and restore the previous count afterwards
    (``None``: leave it as it is).

    The demo grid fits with 1 thread by default: on this project's shared 2-core machines, under load
    from other processes, one thread fitted the default grid in 64 s and two threads in 268 s (most of
    their CPU time spent waiting for a descheduled sibling); on an idle machine two threads took 36 s and
    one 64 s. One thread bounds the worst case. Process-global: do not fit from several threads at once.
    The thread count changes the features' rounding, hence possibly the chosen alpha near the rounding
    budget: a fit is deterministic for a given machine and thread count.

    Raises:
        InputError: ``threads`` < 1.
    """
    if threads is None:
        yield
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"threads must be None or an integer >= 1, got {threads!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_xy(features, labels, num_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(features).to(torch.float64)
    y = torch.as_tensor(labels).to(torch.int64)
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise InputError(f"ridge probe: need features [n, D] and labels [n] with n >= 2, got {list(x.shape)} "
                         f"and {list(y.shape)}")
    if num_labels < 2 or int(y.min()) < 0 or int(y.max()) >= num_labels:
        raise InputError(f"ridge probe: labels must lie in [0, {num_labels}) with num_labels >= 2")
    if not torch.isfinite(x).all():
        raise InputError("ridge probe: features contain NaN or Inf")
    return x, y


def _ridge64(x: torch.Tensor, y: torch.Tensor, num_labels: int, alpha: float):
    target = -torch.ones(x.shape[0], num_labels, dtype=torch.float64)
    target[torch.arange(x.shape[0]), y] = 1.0
    xm, ym = x.mean(0), target.mean(0)
    xc = x - xm
    gram = xc.T @ xc
    lam = float(alpha * torch.trace(gram) / x.shape[1])
    if lam <= 0:
        raise InputError("ridge probe: every feature is constant; nothing to fit")
    w = torch.linalg.solve(gram + lam * torch.eye(x.shape[1], dtype=torch.float64), xc.T @ (target - ym)).T
    return w, ym - w @ xm, lam


def fit_ridge(features: torch.Tensor, labels: torch.Tensor, num_labels: int,
              alpha: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Closed-form ridge regression of +/-1 one-hot targets on features, intercept unpenalised.

    With X [n, D] the features, Y [n, C] the targets (+1 at the label, -1 elsewhere), means x̄, ȳ and
    centred Xc = X - x̄: W = ((Xcᵀ Xc + λ I)⁻¹ Xcᵀ (Y - ȳ))ᵀ, b = ȳ - W x̄, solved in float64
    (Hastie, Tibshirani & Friedman, *The Elements of Statistical Learning*, 2nd ed., §3.4.1). Nothing is
    standardised, so (W, b) apply to the raw features exactly. λ = ``alpha`` · trace(Xcᵀ Xc) / D, i.e.
    ``alpha`` times n times the mean feature variance (invariant to the feature scale).

    Args:
        features: float [n, D].
        labels: int64 [n] class ids in ``[0, num_labels)``.
        num_labels: C >= 2.
        alpha: relative penalty > 0.

    Returns:
        (weight float32 [C, D], bias float32 [C], λ as a float).

    Raises:
        InputError: shape mismatch, fewer than 2 examples, labels out of range, alpha <= 0, non-finite or
            constant features.
    """
    if not alpha > 0:
        raise InputError(f"fit_ridge: alpha must be > 0, got {alpha}")
    x, y = _check_xy(features, labels, num_labels)
    w, b, lam = _ridge64(x, y, num_labels, float(alpha))
    return w.to(torch.float32), b.to(torch.float32), lam


def logit_rounding(weight: torch.Tensor, feature_error: torch.Tensor) -> float:
    """How far a feature rounding error moves the logits of a linear classifier: ``max |E Wᵀ|``.

    Args:
        weight: [C, D] classifier weight.
        feature_error: [m, D] measured error of the features (e.g. fp32 minus fp64 features of m rows).

    Returns:
        the largest absolute logit change over the m rows and C classes (the bias cancels), as a float.

    Raises:
        InputError: the widths disagree.
    """
    w = torch.as_tensor(weight).to(torch.float64)
    e = torch.as_tensor(feature_error).to(torch.float64)
    if w.ndim != 2 or e.ndim != 2 or w.shape[1] != e.shape[1]:
        raise InputError(f"logit_rounding: need weight [C, D] and feature_error [m, D], got {list(w.shape)} and "
                         f"{list(e.shape)}")
    return float((e @ w.T).abs().max()) if e.numel() else 0.0


def choose_alpha(features: torch.Tensor, labels: torch.Tensor, num_labels: int,
                 alphas: tuple[float, ...] = RIDGE_ALPHAS, folds: int = CV_FOLDS, *,
                 feature_error: torch.Tensor | None = None,
                 budget: float = LOGIT_ROUNDING_BUDGET) -> tuple[float, dict[float, float]]:
    """Pick the ridge ``alpha`` of :func:`fit_ridge` by k-fold cross-validated accuracy.

    Folds are ``folds`` contiguous blocks of the rows in their given order (the caller shuffles); each
    alpha is fitted on k-1 blocks and scored on the held-out one (Hastie et al., *Elements of Statistical
    Learning*, §7.10). With ``feature_error``, only alphas whose fit on ALL rows keeps
    :func:`logit_rounding` within ``budget`` are eligible (the largest alpha when none is). The best mean
    held-out accuracy among the eligible wins, ties going to the LARGER alpha (the smoother probe).

    Returns:
        (chosen alpha, {alpha: mean held-out accuracy in [0, 1]} for every alpha tried).

    Raises:
        InputError: fewer rows than folds, folds < 2, no alphas or an alpha <= 0; see :func:`fit_ridge`.
    """
    x, y = _check_xy(features, labels, num_labels)
    if folds < 2 or x.shape[0] < folds:
        raise InputError(f"choose_alpha: need 2 <= folds <= rows, got folds={folds} with {x.shape[0]} rows")
    if not alphas or any(not a > 0 for a in alphas):
        raise InputError(f"choose_alpha: alphas must be a non-empty list of numbers > 0, got {list(alphas)}")
    bounds = np.linspace(0, x.shape[0], folds + 1).round().astype(int)
    scores: dict[float, float] = {}
    for a in alphas:
        correct = 0
        for k in range(folds):
            held = torch.zeros(x.shape[0], dtype=torch.bool)
            held[bounds[k]:bounds[k + 1]] = True
            w, b, _ = _ridge64(x[~held], y[~held], num_labels, float(a))
            correct += int(((x[held] @ w.T + b).argmax(1) == y[held]).sum())
        scores[float(a)] = correct / x.shape[0]
    eligible = sorted(scores)
    if feature_error is not None:
        eligible = [a for a in eligible if logit_rounding(_ridge64(x, y, num_labels, a)[0], feature_error) <= budget]
        eligible = eligible or [max(scores)]
    best = max(eligible, key=lambda a: (scores[a], a))
    return best, scores


def fit_probe(ckpt_dir: str | Path, train: list[Example] | None = None, *, seq_len: int = 128,
              shuffle_seed: int = SHUFFLE_SEED, budget: float = LOGIT_ROUNDING_BUDGET) -> ProbeFit:
    """Fit the classifier of one checkpoint as a linear probe on its frozen features.

    1. The train split (default: :func:`make_dataset`'s) is shuffled with ``random.Random(shuffle_seed)``
       so every mux group mixes labels; label names map to ids with the checkpoint config's ``label2id``.
    2. Features: :func:`probe_features` (compiled model, float32). The first
       :data:`ROUNDING_SAMPLE_ROWS` rows (rounded up to a multiple of N) are computed again with the same
       model cast to float64; their difference is the features' fp32 rounding error.
    3. alpha: :func:`choose_alpha` with that error and ``budget`` (see :data:`LOGIT_ROUNDING_BUDGET`);
       (weight, bias): :func:`fit_ridge` on the whole split.

    Returns:
        :class:`ProbeFit` (weight float32 [C, D], bias [C], train accuracy of the fitted probe on those
        features, cross-validated accuracies, measured logit rounding, the features).

    Raises:
        CheckpointError: the config's ``label2id`` lacks a label of the data set, or the checkpoint /
            tokenizer cannot be read.
        InputError: see :func:`fit_ridge`.
    """
    from prumux_compile.checkpoint import read_raw

    train = list(make_dataset()[0] if train is None else train)
    raw = read_raw(ckpt_dir)
    label2id = {str(k): int(v) for k, v in (raw.config.get("label2id") or {}).items()}
    missing = sorted({ex.label for ex in train} - set(label2id))
    if missing:
        raise CheckpointError(f"{ckpt_dir}: config label2id {label2id} lacks the task label(s) {missing}")
    if "classifier.weight" not in raw.state_dict:
        raise CheckpointError(f"{ckpt_dir}: no classifier.weight")
    num_labels = int(raw.state_dict["classifier.weight"].shape[0])
    random.Random(shuffle_seed).shuffle(train)
    sentences = [ex.sentence for ex in train]
    model, tokenizer, n = _feature_model(raw, seq_len)
    features = _run_features(model, tokenizer, n, sentences, seq_len, 64).to(torch.float32)
    rows = min(len(sentences), -(-ROUNDING_SAMPLE_ROWS // n) * n)
    exact = _run_features(model.to(torch.float64), tokenizer, n, sentences[:rows], seq_len, 64)
    error = features[:rows].double() - exact
    y = torch.tensor([label2id[ex.label] for ex in train], dtype=torch.int64)
    alpha, scores = choose_alpha(features, y, num_labels, feature_error=error, budget=budget)
    w, b, lam = fit_ridge(features, y, num_labels, alpha)
    pred = (features.double() @ w.double().T + b.double()).argmax(1)
    return ProbeFit(w, b, float((pred == y).double().mean()), len(train), alpha, lam, scores[alpha],
                    max(scores.values()), logit_rounding(w, error), features)


def write_classifier(ckpt_dir: str | Path, weight: torch.Tensor, bias: torch.Tensor) -> Path:
    """Replace ``classifier.weight`` / ``classifier.bias`` in ``ckpt_dir/pytorch_model.bin``.

    The file is read with ``torch.load(weights_only=True)``, the two tensors replaced (float32, same
    shapes) and the same dict written back with ``torch.save`` (every other tensor keeps its value and
    tensors shared between keys stay shared).

    Returns:
        the path of the weights file.

    Raises:
        CheckpointError: no ``pytorch_model.bin``, no classifier in it, or a shape mismatch.
    """
    path = Path(ckpt_dir) / "pytorch_model.bin"
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir}: no pytorch_model.bin to write the classifier into")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key, new in (("classifier.weight", weight), ("classifier.bias", bias)):
        if key not in sd:
            raise CheckpointError(f"{path}: no {key}")
        if tuple(sd[key].shape) != tuple(new.shape):
            raise CheckpointError(f"{path}: {key} has shape {list(sd[key].shape)}, the fit has {list(new.shape)}")
        sd[key] = new.detach().to(torch.float32).clone()
    torch.save(sd, path)
    return path
