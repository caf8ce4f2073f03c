"""The one comparator: every engine artifact against the independent float64 reference.

Every validation in the project goes through this module: the ``export`` command, every candidate of
``build`` (all backends, all precisions), the benchmark scripts and the GPU check. Three pieces:

* :data:`CRITERIA` — ONE table of pass criteria keyed by ``(backend, precision)`` (``"*"`` = any backend),
  looked up with :func:`criteria_for`. A criterion is an element-wise bound ``|out - ref| <= atol + rtol·|ref|``
  on the logits plus, optionally, a minimum argmax agreement with the reference over all validated rows.
* :func:`validation_cases` — ONE list of input shapes for every backend: batch sizes ``{1, N-1, N, 2N+1}`` (0
  dropped; fault classes F15 in docs/field-faults.md, F18) times several sequence lengths: ``{compiled length, 16, 7}`` for multiplexed
  models (the compiled length is the benchmarked and the served one); for N = 1 ``{7, 16, 33}`` plus the length
  the candidate is benchmarked at and the longest the model accepts (its position table, capped at
  :data:`LONGEST_CASE` tokens: the float64 reference costs ~10 s at 512 tokens for a MiniLM-sized model on one
  core, and grows quadratically beyond); every length clipped to ``[2, max_seq_len]``.
* :func:`compare` (one output against the reference) and :func:`validate` (runners against
  :func:`prumux_compile.reference.forward` computed in float64 on the same inputs).

A case passes when the output is float32 ``[B, num_labels]``, has no NaN/Inf (F8 in docs/field-faults.md, F9), lies within the
criterion's bound, a second identical call returns bit-identical logits (deterministic batch padding, F18 in docs/field-faults.md) and
the caller's input arrays are unchanged (F18; upstream writes [CLS] in place, docs/checkpoint-formats.md Q18).
An artifact passes when every case passes and, where the criterion asks for it, the argmax agreement over all
its rows reaches the minimum. :func:`require_passed` turns a failure into
:class:`~prumux_compile.errors.ValidationError` (exit 3) carrying the per-case table; :func:`validation_document`
is the content of ``validation.json`` and records the criteria used (docs/report.md).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np

from prumux_compile.errors import InputError, PrumuxError, ValidationError
from prumux_compile.export.inputs import realistic_inputs
from prumux_compile.export.spec import OUTPUT_NAME, ExportSpec

__all__ = ["Criteria", "CRITERIA", "criteria_for", "Comparison", "compare", "CaseResult", "ArtifactValidation",
           "validation_cases", "validation_lengths", "validate", "require_passed", "format_table",
           "validation_document"]

_MUXED_LENGTHS = (None, 16, 7)  # None = the compiled length
_SINGLE_LENGTHS = (7, 16, 33)
#: Longest N = 1 validation length (tokens): the position table of BERT-sized models. Longer tables (long-context
#: models) are validated up to here only: the float64 reference's cost grows quadratically with the length.
LONGEST_CASE = 512
#: The length engines measure an N = 1 model at when the caller names none (EngineConfig.seq_len = None).
_DEFAULT_BENCH_LEN = 128


@dataclass(frozen=True)
class Criteria:
    """Pass criteria of one (backend, precision) against the float64 reference.

    Attributes:
        atol: absolute bound on ``|logit - reference|`` (logit units).
        rtol: relative bound, a fraction of ``|reference|`` (added to ``atol`` element-wise).
        min_agreement: minimum fraction in [0, 1] of rows whose argmax equals the reference's, over all decided
            rows of an artifact's cases; None = recorded, not required.
        why: where the numbers come from (one line, written to ``validation.json``).
        tie_margin: a row whose reference top-2 margin (largest minus second-largest logit) is at most this
            fraction of the logit scale (the largest ``|reference logit|`` over all of an artifact's cases) is a tie
            at this precision: it is not counted in the argmax agreement (random-input validation cases have
            near-ties that any rounding may flip). 0 = every row counts.
        scale_rtol: adds ``scale_rtol ·`` the logit scale to every element's bound: for precisions whose error
            grows with the activations' range (int8), not with each logit's own size.
    """

    atol: float
    rtol: float = 0.0
    min_agreement: float | None = None
    why: str = ""
    tie_margin: float = 0.0
    scale_rtol: float = 0.0

    def bound(self, ref: np.ndarray, scale: float | None = None) -> np.ndarray:
        """Element-wise allowed error ``atol + rtol·|ref| + scale_rtol·scale`` (float64); ``scale`` defaults to
        ``max|ref|``."""
        r = np.abs(np.asarray(ref, dtype=np.float64))
        scale = float(r.max()) if scale is None and r.size else (scale or 0.0)
        return self.atol + self.rtol * r + self.scale_rtol * scale

    def describe(self) -> str:
        """``"|Δ| <= 1e-04"`` / ``"|Δ| <= 0.05 + 0.02·|ref|, argmax agreement >= 0.995"``."""
        s = (f"|Δ| <= {self.atol:g}" + (f" + {self.rtol:g}·|ref|" if self.rtol else "")
             + (f" + {self.scale_rtol:g}·max|ref|" if self.scale_rtol else ""))
        if self.min_agreement is not None:
            s += f", argmax agreement >= {self.min_agreement:g}"
            s += f" (ties: top-2 margin <= {self.tie_margin:g}·max|ref| not counted)" if self.tie_margin else ""
        return s

    def to_dict(self) -> dict:
        return asdict(self)


_FP32_CPU = ("fp32 on the CPU: the compiled graph and the reference differ only in float32 rounding and "
             "summation order (observed <= 3e-6 on BERT-base shapes)")
_FP32_GPU = ("fp32 on a GPU: other GEMM reduction orders than the CPU (TF32 off), so a looser bound than "
             "the CPU's 1e-4")
_FP16 = ("fp16 GEMMs (unit roundoff 2^-11) with LayerNorm, softmax and reductions in fp32: a few 1e-3 logit "
         "error after a dozen layers at O(1) logits; argmax must agree on >= 99.5% of rows")
_BF16 = ("bf16 GEMMs (unit roundoff 2^-8) with LayerNorm, softmax and reductions in fp32: a few 1e-2 logit "
         "error after a dozen layers; argmax must agree on >= 99.5% of rows")

_INT8_CPU = ("int8 encoder GEMMs (ONNX Runtime quantization: per-channel int8 weights, uint8 activations with one "
             "scale per tensor; OpenVINO: NNCF) with embeddings, mux/demux and the classifier in float. The error "
             "follows each activation tensor's range, not each logit: measured up to 0.35·max|logit| on MiniLM's "
             "evaluation texts (max|ref| = the largest |reference logit| over the artifact's validation cases). "
             "These criteria say whether "
             "the engine computes this model at int8 — a broken engine (zeroed, rescaled, sign-flipped or scrambled "
             "logits) fails |Δ| <= 0.05 + 0.75·max|ref| or argmax agreement >= 0.8 over the rows that are not ties "
             "(top-2 margin > 0.25·max|ref|); whether int8 is accurate enough is the accuracy through the engine, "
             "judged by the selection's budget")
_BF16_CPU = ("bf16 on the CPU (OpenVINO's bf16 inference precision, AVX-512 BF16): OpenVINO also keeps some "
             "elementwise ops in bf16, more than the GPU dtype policy; measured up to 0.26·max|ref| on the small "
             "logits of an untrained MiniLM multiplexer. |Δ| <= 0.1 + 0.3·max|ref| and argmax agreement >= 0.9 over "
             "the rows that are not ties (top-2 margin > 0.1·max|ref|) catch a broken engine; accuracy through the "
             "engine judges the candidate")

#: THE criteria table, keyed by (backend registry name or "*", precision). Looked up by :func:`criteria_for`:
#: an exact (backend, precision) row first, then ("*", precision). A precision without a row is refused.
CRITERIA: dict[tuple[str, str], Criteria] = {
    ("*", "fp32"): Criteria(atol=1e-4, why=_FP32_CPU),
    ("ort-cuda", "fp32"): Criteria(atol=1e-3, why=_FP32_GPU),
    ("torch-cuda", "fp32"): Criteria(atol=1e-3, why=_FP32_GPU),
    ("tensorrt", "fp32"): Criteria(atol=1e-3, why=_FP32_GPU),
    ("*", "fp16"): Criteria(atol=5e-2, rtol=2e-2, min_agreement=0.995, why=_FP16),
    ("*", "bf16"): Criteria(atol=2e-1, rtol=5e-2, min_agreement=0.995, why=_BF16),
    ("*", "int8"): Criteria(atol=5e-2, scale_rtol=0.75, min_agreement=0.8, tie_margin=0.25, why=_INT8_CPU),
    ("openvino", "bf16"): Criteria(atol=0.1, scale_rtol=0.3, min_agreement=0.9, tie_margin=0.1, why=_BF16_CPU),
}


def criteria_for(backend: str, precision: str) -> Criteria:
    """The criteria row of ``(backend, precision)`` in :data:`CRITERIA` (exact row, else the ``"*"`` row).

    Raises:
        InputError: no row for that precision (the message lists the precisions that have one).
    """
    row = CRITERIA.get((backend, precision)) or CRITERIA.get(("*", precision))
    if row is None:
        known = sorted({p for _, p in CRITERIA})
        raise InputError(f"no validation criteria for precision {precision!r} (backend {backend}); "
                         f"known: {', '.join(known)}")
    return row


@dataclass(frozen=True)
class Comparison:
    """One output against the reference (:func:`compare`).

    Attributes:
        shape_ok: float32 output of the reference's shape ``[B, C]``.
        finite: no NaN/Inf.
        max_abs_diff: ``max |out - ref|`` (inf when not finite or the shape is wrong).
        max_excess: ``max(|out - ref| - bound)``; <= 0 when within the criteria's bound (inf when not comparable).
        agree_rows: decided rows whose argmax equals the reference's (0 when not comparable).
        rows: decided rows compared (rows whose reference is a tie under ``criteria.tie_margin`` are left out).
        tied_rows: rows left out as ties.
    """

    shape_ok: bool
    finite: bool
    max_abs_diff: float
    max_excess: float
    agree_rows: int
    rows: int
    tied_rows: int = 0

    @property
    def within(self) -> bool:
        """Shape right, finite, and inside the element-wise bound."""
        return self.shape_ok and self.finite and self.max_excess <= 0.0

    @property
    def argmax_agreement(self) -> float:
        """Fraction of decided rows that agree (1.0 when every row is a tie)."""
        if not self.rows:
            return 1.0 if self.tied_rows and self.shape_ok and self.finite else 0.0
        return self.agree_rows / self.rows


def compare(out, ref, criteria: Criteria, scale: float | None = None) -> Comparison:
    """Compare engine logits with reference logits under ``criteria`` (never raises on a mismatch).

    Args:
        out: engine logits, expected float32 ``[B, C]``.
        ref: reference logits ``[B, C]`` (float64 preferred).
        criteria: the bound to apply.
        scale: the logit scale of ``criteria.scale_rtol`` / ``tie_margin`` (default ``max|ref|``; :func:`validate`
            passes the largest over all of an artifact's cases).
    """
    a = np.asarray(out)
    r = np.asarray(ref, dtype=np.float64)
    shape_ok = a.shape == r.shape and a.dtype == np.float32 and a.ndim == 2
    finite = bool(a.size) and a.dtype.kind == "f" and bool(np.isfinite(a).all())
    if not (shape_ok and finite):
        return Comparison(shape_ok, finite, float("inf"), float("inf"), 0, int(r.shape[0]) if r.ndim else 0)
    d = np.abs(a.astype(np.float64) - r)
    scale = float(np.abs(r).max()) if scale is None else float(scale)
    excess = float((d - criteria.bound(r, scale)).max())
    if r.shape[-1] < 2:
        return Comparison(True, True, float(d.max()), excess, int(r.shape[0]), int(r.shape[0]))
    top2 = np.sort(r, axis=-1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > criteria.tie_margin * scale
    agree = int(np.sum((a.argmax(-1) == r.argmax(-1)) & decided))
    return Comparison(True, True, float(d.max()), excess, agree, int(decided.sum()), int((~decided).sum()))


class _Runs(Protocol):
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass
class CaseResult:
    """One (artifact, batch, sequence length) comparison.

    Attributes:
        batch, seq: input shape.
        max_abs_diff: ``max |logits - reference|`` (inf when the output is not finite or has the wrong shape).
        max_excess: largest excess over the criteria's element-wise bound (<= 0 passes).
        argmax_agreement: fraction of this case's rows whose argmax equals the reference's.
        finite: no NaN/Inf in the output.
        deterministic: a second call gave bit-identical logits.
        inputs_unchanged: the caller's arrays were not modified.
        passed: all of the above within the criteria.
        error: an error raised by the artifact (then ``passed`` is False).
        agree_rows / rows: the counts behind ``argmax_agreement``.
    """

    batch: int
    seq: int
    max_abs_diff: float
    max_excess: float
    argmax_agreement: float
    finite: bool
    deterministic: bool
    inputs_unchanged: bool
    passed: bool
    error: str | None = None
    agree_rows: int = 0
    rows: int = 0
    tied_rows: int = 0


@dataclass
class ArtifactValidation:
    """All cases of one artifact. ``to_dict()`` is what ``validation.json`` stores per artifact."""

    artifact: str
    output: str
    criteria: Criteria
    cases: list[CaseResult] = field(default_factory=list)

    @property
    def tolerance(self) -> float:
        """The criteria's absolute bound (kept for callers that print one number)."""
        return self.criteria.atol

    @property
    def argmax_agreement(self) -> float:
        """Argmax agreement over every decided row of every case (1.0 when every row is a tie)."""
        rows = sum(c.rows for c in self.cases)
        if not rows:
            return 1.0 if any(c.tied_rows for c in self.cases) else 0.0
        return sum(c.agree_rows for c in self.cases) / rows

    @property
    def agreement_ok(self) -> bool:
        m = self.criteria.min_agreement
        return m is None or self.argmax_agreement >= m

    @property
    def passed(self) -> bool:
        return bool(self.cases) and all(c.passed for c in self.cases) and self.agreement_ok

    @property
    def max_abs_diff(self) -> float:
        return max((c.max_abs_diff for c in self.cases), default=float("inf"))

    def to_dict(self) -> dict:
        return {"artifact": self.artifact, "output": self.output, "criteria": self.criteria.to_dict(),
                "passed": self.passed, "max_abs_diff": _json_float(self.max_abs_diff),
                "argmax_agreement": self.argmax_agreement, "agreement_ok": self.agreement_ok,
                "cases": [{**asdict(c), "max_abs_diff": _json_float(c.max_abs_diff),
                           "max_excess": _json_float(c.max_excess)} for c in self.cases]}


def _json_float(x: float) -> float | str:
    return x if np.isfinite(x) else str(x)


def validation_lengths(spec: ExportSpec, seq_len: int | None = None) -> list[int]:
    """The sequence lengths (tokens) of :func:`validation_cases`, ascending.

    Args:
        spec: the model interface.
        seq_len: the length the candidate is benchmarked at (``build --seq-len``); None = the engines' default
            (``min(128, max_seq_len)`` for N = 1; the compiled length for multiplexed models).
    """
    if spec.muxed:
        lengths = {spec.seq_len if s is None else s for s in _MUXED_LENGTHS}
    else:
        bench = _DEFAULT_BENCH_LEN if seq_len is None else int(seq_len)
        lengths = set(_SINGLE_LENGTHS) | {bench, min(spec.max_seq_len, LONGEST_CASE)}
    if seq_len is not None:
        lengths.add(int(seq_len))
    return sorted({max(2, min(s, spec.max_seq_len)) for s in lengths})


def validation_cases(spec: ExportSpec, seq_len: int | None = None) -> list[tuple[int, int]]:
    """``(batch, seq)`` pairs to validate (module docstring), batch-major, deduplicated, sorted; the same list
    for every backend.

    Args:
        spec: the model interface.
        seq_len: the length the candidate is benchmarked at, tokens (:func:`validation_lengths`).
    """
    n = spec.num_instances
    batches = sorted({b for b in (1, n - 1, n, 2 * n + 1) if b >= 1})
    return [(b, s) for b in batches for s in validation_lengths(spec, seq_len)]


def case_inputs(spec: ExportSpec, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The deterministic inputs of one case (what :func:`validate` feeds both sides)."""
    return realistic_inputs(batch, seq, spec.vocab_size, seed=seed * 1_000_003 + batch * 1009 + seq,
                            type_vocab_size=spec.type_vocab_size)


def reference_logits(raw, spec: ExportSpec, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Float64 reference logits ``[B, C]`` of ``feeds`` (:func:`prumux_compile.reference.forward`)."""
    import torch

    from prumux_compile import reference

    seq_len = spec.seq_len if spec.seq_len is not None else 128
    ref = reference.forward(raw, feeds["input_ids"], feeds["attention_mask"], feeds["token_type_ids"],
                            seq_len=seq_len, dtype=torch.float64)
    return ref.detach().cpu().numpy().astype(np.float64) if hasattr(ref, "detach") else np.asarray(ref, np.float64)


def validate(runners: dict[str, _Runs], raw, spec: ExportSpec, criteria: Criteria | dict[str, Criteria], *,
             seed: int = 0, cases: list[tuple[int, int]] | None = None,
             seq_len: int | None = None) -> dict[str, ArtifactValidation]:
    """Compare every runner with the float64 reference on the same inputs (module docstring); never raises on a
    mismatch (see :func:`require_passed`).

    Args:
        runners: artifact name (e.g. ``"model.onnx"``) -> object with ``run(feeds) -> {"logits": ...}``.
        raw: the checkpoint as read by :func:`prumux_compile.checkpoint.read_raw` (the reference's input).
        spec: the model interface (N, compiled length, vocabulary).
        criteria: one :class:`Criteria` for every runner, or one per runner name.
        seed: base seed of the inputs (each case derives its own seed from it).
        cases: ``(batch, seq)`` pairs; default :func:`validation_cases` of ``spec`` and ``seq_len``.
        seq_len: the length the artifact is benchmarked at (tokens; :func:`validation_lengths`), used when
            ``cases`` is None.

    Returns:
        artifact name -> :class:`ArtifactValidation`.

    Raises:
        InputError / CheckpointError: raised by the reference itself (its inputs or checkpoint are bad).
    """
    per = criteria if isinstance(criteria, dict) else {name: criteria for name in runners}
    missing = sorted(set(runners) - set(per))
    if missing:
        raise InputError(f"validate: no criteria for {missing}")
    cases = validation_cases(spec, seq_len) if cases is None else cases
    results = {name: ArtifactValidation(name, OUTPUT_NAME, per[name]) for name in runners}
    refs = [(b, s, case_inputs(spec, b, s, seed)) for b, s in cases]
    refs = [(b, s, feeds, reference_logits(raw, spec, feeds)) for b, s, feeds in refs]
    scale = max((float(np.abs(ref).max()) for *_, ref in refs), default=0.0)  # the artifact's logit scale
    for b, s, feeds, ref in refs:
        for name, runner in runners.items():
            snapshot = {k: v.copy() for k, v in feeds.items()}
            try:
                out = np.asarray(runner.run(feeds)[OUTPUT_NAME])
                again = np.asarray(runner.run(feeds)[OUTPUT_NAME])
            except PrumuxError as exc:
                results[name].cases.append(CaseResult(b, s, float("inf"), float("inf"), 0.0, False, False,
                                                      _unchanged(feeds, snapshot), False, str(exc), 0, b))
                continue
            c = compare(out, ref, per[name], scale)
            deterministic = again.shape == out.shape and bool(np.array_equal(out, again, equal_nan=True))
            unchanged = _unchanged(feeds, snapshot)
            results[name].cases.append(CaseResult(b, s, c.max_abs_diff, c.max_excess, c.argmax_agreement, c.finite,
                                                  deterministic, unchanged, c.within and deterministic and unchanged,
                                                  None, c.agree_rows, c.rows, c.tied_rows))
    return results


def _unchanged(feeds: dict[str, np.ndarray], snapshot: dict[str, np.ndarray]) -> bool:
    return all(np.array_equal(feeds[k], snapshot[k]) for k in snapshot)


def format_table(results: dict[str, ArtifactValidation]) -> str:
    """Plain-text per-case table: artifact, batch, seq, max |Δ|, argmax agreement, checks, verdict."""
    head = (f"{'artifact':<22} {'batch':>5} {'seq':>4} {'max|Δ|':>10} {'argmax':>7}  {'checks':<24} result")
    lines = [head, "-" * len(head)]
    for name, res in results.items():
        for c in res.cases:
            flags = [f for f, ok in (("NaN/Inf", c.finite), ("nondeterministic", c.deterministic),
                                     ("input-modified", c.inputs_unchanged)) if not ok]
            check = c.error[:24] if c.error else (",".join(flags) or "ok")
            diff = f"{c.max_abs_diff:.2e}" if np.isfinite(c.max_abs_diff) else str(c.max_abs_diff)
            lines.append(f"{name:<22} {c.batch:>5} {c.seq:>4} {diff:>10} {c.argmax_agreement:>7.2f}  "
                         f"{check:<24} {'pass' if c.passed else 'FAIL'}")
        lines.append(f"{name:<22} criteria {res.criteria.describe()}; argmax agreement over all rows "
                     f"{res.argmax_agreement:.4f} -> {'pass' if res.passed else 'FAIL'}")
    return "\n".join(lines)


def require_passed(results: dict[str, ArtifactValidation]) -> None:
    """Raise :class:`ValidationError` (exit 3) unless every artifact passed.

    The message is one line (artifact, failing cases, worst case); ``err.table`` holds :func:`format_table`.
    """
    parts = []
    for name, res in results.items():
        if res.passed:
            continue
        bad = [c for c in res.cases if not c.passed]
        if not res.cases:
            parts.append(f"{name}: no cases ran")
        elif not bad:
            parts.append(f"{name}: argmax agreement {res.argmax_agreement:.4f} < {res.criteria.min_agreement:g}")
        else:
            worst = max(bad, key=lambda c: c.max_excess)
            why = worst.error or ("NaN/Inf" if not worst.finite else "nondeterministic" if not worst.deterministic
                                  else "input modified" if not worst.inputs_unchanged
                                  else f"max |Δlogit| {worst.max_abs_diff:.3g} outside {res.criteria.describe()}")
            parts.append(f"{name}: {len(bad)}/{len(res.cases)} cases failed (worst: batch {worst.batch}, seq "
                         f"{worst.seq}: {why})")
    if not parts:
        return
    err = ValidationError("validation against the reference failed: " + "; ".join(parts))
    err.table = format_table(results)
    raise err


def validation_document(results: dict[str, ArtifactValidation], spec: ExportSpec, *, seed: int = 0,
                        backend: str | None = None, precision: str | None = None,
                        bench_seq_len: int | None = None) -> dict:
    """The content of ``validation.json``: settings, criteria, per-artifact cases and an overall verdict
    (fields: docs/report.md). ``bench_seq_len`` is the length the artifact is benchmarked at (tokens; None = the
    engines' default), recorded beside the lengths validated."""
    lengths = sorted({c.seq for r in results.values() for c in r.cases})
    return {
        "schema": "prumux-compile/validation/2",
        "reference": "prumux_compile.reference.forward (float64)",
        "backend": backend,
        "precision": precision,
        "inputs": {"generator": "numpy.random.default_rng", "seed": seed,
                   "cases": sorted({(c.batch, c.seq) for r in results.values() for c in r.cases}),
                   "description": "[CLS]=101 first, [SEP]=102, random tokens, odd rows right-padded, "
                                  "every third row a sentence pair (token types 0/1)"},
        "num_instances": spec.num_instances,
        "seq_len": spec.seq_len,
        "lengths": {"validated": lengths,
                    "benchmarked": (bench_seq_len if bench_seq_len is not None else
                                    spec.seq_len if spec.muxed else min(_DEFAULT_BENCH_LEN, spec.max_seq_len)),
                    "longest_accepted": spec.max_seq_len, "longest_validated_cap": LONGEST_CASE},
        "passed": all(r.passed for r in results.values()),
        "artifacts": {name: r.to_dict() for name, r in results.items()},
    }
