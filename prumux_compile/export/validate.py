"""Validation of exported artifacts against the independent reference (DESIGN.md "Fidelity").

Every artifact is run on the same deterministic inputs as :func:`prumux_compile.reference.forward` (upstream
semantics on the stored checkpoint, sharing no code with the compiled model), at batch sizes
``{1, N-1, N, 2N+1}`` (0 skipped; fault classes F15, F18) and several sequence lengths (``{seq_len, 16, 7}``
for multiplexed models, ``{7, 16, 33}`` for N = 1; clipped to the model's limit). A case passes when

* the output is float32 ``[B, num_labels]`` and finite (NaN/Inf always fails, F8/F9),
* ``max |logits - reference| <= tolerance`` (1e-4 in fp32),
* a second identical call returns bit-identical logits (deterministic padding, F18),
* the caller's input arrays are unchanged afterwards (F18; upstream writes [CLS] in place, spec Q18).

Argmax agreement with the reference is recorded as well. Failure raises
:class:`~prumux_compile.errors.ValidationError` (exit 3) whose ``table`` attribute holds the per-case table.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np

from prumux_compile import reference
from prumux_compile.errors import PrumuxError, ValidationError
from prumux_compile.export.inputs import realistic_inputs
from prumux_compile.export.spec import OUTPUT_NAME, ExportSpec

__all__ = ["DEFAULT_TOLERANCE", "CaseResult", "ArtifactValidation", "validation_cases", "validate_artifacts",
           "require_passed", "format_table", "validation_document"]

#: fp32 tolerance on logits, absolute (DESIGN.md "Fidelity").
DEFAULT_TOLERANCE = 1e-4
_MUXED_LENGTHS = (None, 16, 7)  # None = the compiled length
_SINGLE_LENGTHS = (7, 16, 33)


class _Runs(Protocol):
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass
class CaseResult:
    """One (artifact, batch, sequence length) comparison.

    Attributes:
        batch, seq: input shape.
        max_abs_diff: ``max |logits - reference|`` (inf when the output is not finite or has the wrong shape).
        argmax_agreement: fraction of rows whose argmax equals the reference's.
        finite: no NaN/Inf in the output.
        deterministic: a second call gave bit-identical logits.
        inputs_unchanged: the caller's arrays were not modified.
        passed: all of the above within ``tolerance``.
        error: an error raised by the artifact (then ``passed`` is False).
    """

    batch: int
    seq: int
    max_abs_diff: float
    argmax_agreement: float
    finite: bool
    deterministic: bool
    inputs_unchanged: bool
    passed: bool
    error: str | None = None


@dataclass
class ArtifactValidation:
    """All cases of one artifact. ``to_dict()`` is what ``validation.json`` stores per artifact."""

    artifact: str
    output: str
    tolerance: float
    cases: list[CaseResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.cases) and all(c.passed for c in self.cases)

    @property
    def max_abs_diff(self) -> float:
        return max((c.max_abs_diff for c in self.cases), default=float("inf"))

    def to_dict(self) -> dict:
        return {"artifact": self.artifact, "output": self.output, "tolerance": self.tolerance,
                "passed": self.passed, "max_abs_diff": _json_float(self.max_abs_diff),
                "cases": [{**asdict(c), "max_abs_diff": _json_float(c.max_abs_diff)} for c in self.cases]}


def _json_float(x: float) -> float | str:
    return x if np.isfinite(x) else str(x)


def validation_cases(spec: ExportSpec) -> list[tuple[int, int]]:
    """``(batch, seq)`` pairs to validate (module docstring), batch-major, deduplicated, sorted."""
    n = spec.num_instances
    batches = sorted({b for b in (1, n - 1, n, 2 * n + 1) if b >= 1})
    if spec.muxed:
        lengths = {spec.seq_len if s is None else s for s in _MUXED_LENGTHS}
    else:
        lengths = set(_SINGLE_LENGTHS)
    lengths = sorted({max(2, min(s, spec.max_seq_len)) for s in lengths})
    return [(b, s) for b in batches for s in lengths]


def _compare(out: np.ndarray, again: np.ndarray, ref: np.ndarray, tolerance: float) -> dict:
    shape_ok = out.shape == ref.shape and out.dtype == np.float32
    finite = bool(np.isfinite(out).all()) if out.size else False
    if shape_ok and finite:
        diff = float(np.max(np.abs(out.astype(np.float64) - ref.astype(np.float64))))
        agree = float(np.mean(out.argmax(-1) == ref.argmax(-1)))
    else:
        diff, agree = float("inf"), 0.0
    deterministic = again.shape == out.shape and bool(np.array_equal(out, again, equal_nan=True))
    return {"max_abs_diff": diff, "argmax_agreement": agree, "finite": finite, "deterministic": deterministic,
            "ok": shape_ok and finite and diff <= tolerance and deterministic}


def validate_artifacts(runners: dict[str, _Runs], raw, spec: ExportSpec, *, tolerance: float = DEFAULT_TOLERANCE,
                       seed: int = 0, cases: list[tuple[int, int]] | None = None) -> dict[str, ArtifactValidation]:
    """Compare every runner with the reference on the same inputs (module docstring); never raises on mismatch.

    Args:
        runners: artifact name (e.g. ``"model.onnx"``) -> object with ``run(feeds) -> {"logits": ...}``.
        raw: the checkpoint as read by :func:`prumux_compile.checkpoint.read_raw` (the reference's input).
        spec: the model interface (N, compiled length, vocabulary).
        tolerance: max allowed ``|Δlogit|`` (absolute, fp32).
        seed: base seed of the inputs (each case derives its own seed from it).
        cases: ``(batch, seq)`` pairs; default :func:`validation_cases`.

    Returns:
        artifact name -> :class:`ArtifactValidation`.

    Raises:
        InputError / CheckpointError: raised by the reference itself (its inputs or checkpoint are bad).
    """
    cases = validation_cases(spec) if cases is None else cases
    results = {name: ArtifactValidation(name, OUTPUT_NAME, float(tolerance)) for name in runners}
    ref_seq_len = spec.seq_len if spec.seq_len is not None else 128
    for b, s in cases:
        feeds = realistic_inputs(b, s, spec.vocab_size, seed=seed * 1_000_003 + b * 1009 + s,
                                 type_vocab_size=spec.type_vocab_size)
        ref = reference.forward(raw, feeds["input_ids"], feeds["attention_mask"], feeds["token_type_ids"],
                                seq_len=ref_seq_len)
        ref = ref.detach().cpu().numpy() if hasattr(ref, "detach") else np.asarray(ref)
        for name, runner in runners.items():
            snapshot = {k: v.copy() for k, v in feeds.items()}
            try:
                out = np.asarray(runner.run(feeds)[OUTPUT_NAME])
                again = np.asarray(runner.run(feeds)[OUTPUT_NAME])
            except PrumuxError as exc:
                results[name].cases.append(CaseResult(b, s, float("inf"), 0.0, False, False,
                                                      _unchanged(feeds, snapshot), False, str(exc)))
                continue
            c = _compare(out, again, ref, tolerance)
            unchanged = _unchanged(feeds, snapshot)
            results[name].cases.append(CaseResult(b, s, c["max_abs_diff"], c["argmax_agreement"], c["finite"],
                                                  c["deterministic"], unchanged, c["ok"] and unchanged))
    return results


def _unchanged(feeds: dict[str, np.ndarray], snapshot: dict[str, np.ndarray]) -> bool:
    return all(np.array_equal(feeds[k], snapshot[k]) for k in snapshot)


def format_table(results: dict[str, ArtifactValidation]) -> str:
    """Plain-text per-case table: artifact, output, batch, seq, max |Δ|, argmax agreement, checks, verdict."""
    head = (f"{'artifact':<16} {'output':<7} {'batch':>5} {'seq':>4} {'max|Δ|':>10} {'argmax':>7}  {'checks':<24} "
            "result")
    lines = [head, "-" * len(head)]
    for name, res in results.items():
        for c in res.cases:
            flags = [f for f, ok in (("NaN/Inf", c.finite), ("nondeterministic", c.deterministic),
                                     ("input-modified", c.inputs_unchanged)) if not ok]
            check = c.error[:24] if c.error else (",".join(flags) or "ok")
            diff = f"{c.max_abs_diff:.2e}" if np.isfinite(c.max_abs_diff) else str(c.max_abs_diff)
            lines.append(f"{name:<16} {res.output:<7} {c.batch:>5} {c.seq:>4} {diff:>10} {c.argmax_agreement:>7.2f}  "
                         f"{check:<24} {'pass' if c.passed else 'FAIL'}")
    return "\n".join(lines)


def require_passed(results: dict[str, ArtifactValidation]) -> None:
    """Raise :class:`ValidationError` (exit 3) unless every case of every artifact passed.

    The message is one line (artifact, failing cases, worst case); ``err.table`` holds :func:`format_table`.
    """
    failing = {name: [c for c in r.cases if not c.passed] for name, r in results.items()}
    failing = {k: v for k, v in failing.items() if v or not results[k].cases}
    if not failing:
        return
    parts = []
    for name, bad in failing.items():
        res = results[name]
        if not bad:
            parts.append(f"{name}: no cases ran")
            continue
        worst = max(bad, key=lambda c: c.max_abs_diff)
        why = worst.error or ("NaN/Inf" if not worst.finite else "nondeterministic" if not worst.deterministic
                              else "input modified" if not worst.inputs_unchanged
                              else f"max |Δlogit| {worst.max_abs_diff:.3g} > {res.tolerance:g}")
        parts.append(f"{name}: {len(bad)}/{len(res.cases)} cases failed (worst: batch {worst.batch}, seq {worst.seq}: "
                     f"{why})")
    err = ValidationError("validation against the reference failed: " + "; ".join(parts))
    err.table = format_table(results)
    raise err


def validation_document(results: dict[str, ArtifactValidation], spec: ExportSpec, *, seed: int = 0) -> dict:
    """The content of ``validation.json``: settings, per-artifact cases and an overall verdict."""
    return {
        "schema": "prumux-compile/validation/1",
        "reference": "prumux_compile.reference.forward (float32)",
        "inputs": {"generator": "numpy.random.default_rng", "seed": seed,
                   "cases": sorted({(c.batch, c.seq) for r in results.values() for c in r.cases}),
                   "description": "[CLS]=101 first, [SEP]=102, random tokens, odd rows right-padded, "
                                  "every third row a sentence pair (token types 0/1)"},
        "num_instances": spec.num_instances,
        "seq_len": spec.seq_len,
        "passed": all(r.passed for r in results.values()),
        "artifacts": {name: r.to_dict() for name, r in results.items()},
    }
