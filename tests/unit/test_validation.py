"""The one comparator (prumux_compile.validation): the criteria table, compare(), the case list, the verdicts of
validate() / require_passed() and what validation.json records."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from prumux_compile import reference
from prumux_compile.checkpoint import read_raw
from prumux_compile.errors import InputError, ValidationError
from prumux_compile.export.spec import make_spec
from prumux_compile.demo.synthetic import SynthSpec, write_checkpoint
from prumux_compile.validation import (CRITERIA, Criteria, compare, criteria_for, require_passed, validate,
                                       validation_document)

SEQ = 16
BASE = dict(num_layers=1, hidden=32, heads=4, ffn=32, vocab=128, max_pos=64, num_labels=3)
REF = np.array([[1.0, -2.0, 0.5], [0.2, 0.1, -3.0]])


@pytest.mark.parametrize("backend, precision, atol, rtol, agreement", [
    ("ort-cpu", "fp32", 1e-4, 0.0, None),
    ("openvino", "fp32", 1e-4, 0.0, None),          # a new backend falls back to the "*" row
    ("ort-cuda", "fp32", 1e-3, 0.0, None),
    ("torch-cuda", "fp32", 1e-3, 0.0, None),
    ("tensorrt", "fp32", 1e-3, 0.0, None),
    ("tensorrt", "fp16", 5e-2, 2e-2, 0.995),
    ("torch-cuda", "bf16", 2e-1, 5e-2, 0.995),
    ("ort-cpu", "int8", 5e-2, 0.0, 0.8),         # int8 CPU: the "*" row (plus 0.75·max|ref|): a broken-engine check
    ("openvino", "bf16", 0.1, 0.0, 0.9),         # OpenVINO bf16 (plus 0.3·max|ref|)
])
def test_criteria_table(backend, precision, atol, rtol, agreement):
    c = criteria_for(backend, precision)
    assert (c.atol, c.rtol, c.min_agreement) == (atol, rtol, agreement)
    assert c.why


def test_unknown_precision_has_no_criteria():
    with pytest.raises(InputError, match="no validation criteria for precision 'int4'.*known: bf16, fp16, fp32, int8"):
        criteria_for("ort-cpu", "int4")


def test_the_table_is_the_only_tolerance_in_the_package():
    """One comparator: no module but validation.py defines a tolerance table or a compare/fidelity function."""
    root = Path(__file__).resolve().parents[2] / "prumux_compile"
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "validation.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name in ("fidelity", "validate_runner", "validate_onnx",
                                                                   "validate_artifacts", "compare"):
                offenders.append(f"{path.name}:{node.name}")
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") in ("TOLERANCES", "DEFAULT_TOLERANCE")
                                                    for t in node.targets):
                offenders.append(f"{path.name}:{node.targets[0].id}")
    assert offenders == []
    assert len(CRITERIA) == 8


@pytest.mark.parametrize("precision, delta, within", [
    ("fp32", 9e-5, True), ("fp32", 1.1e-4, False),
    # fp16: bound 0.05 + 0.02·|ref| per element; the largest |ref| = 3.0 allows 0.11 there, 0.052 at |ref| = 0.1
    ("fp16", 0.05, True), ("fp16", 0.06, False),
])
def test_compare_bound(precision, delta, within):
    c = compare((REF + delta).astype(np.float32), REF, criteria_for("ort-cpu", precision))
    assert c.within is within
    assert c.max_abs_diff == pytest.approx(delta, rel=1e-3)  # float32 rounding of REF + delta
    assert c.argmax_agreement == 1.0 and c.rows == 2


def test_compare_nan_shape_and_dtype():
    crit = criteria_for("ort-cpu", "fp32")
    bad = REF.astype(np.float32).copy()
    bad[1, 2] = np.nan
    assert not compare(bad, REF, crit).finite and compare(bad, REF, crit).max_abs_diff == float("inf")
    assert not compare(REF[:1].astype(np.float32), REF, crit).shape_ok
    assert not compare(REF, REF, crit).shape_ok  # float64 output: the interface says float32
    flipped = REF.astype(np.float32)
    flipped[0] = flipped[0, [1, 0, 2]]  # row 0's argmax moves from class 0 to class 1; row 1 keeps class 0
    assert compare(flipped, REF, crit).argmax_agreement == 0.5


@pytest.mark.parametrize("margin, agreement, tied", [
    # REF: max|ref| 3; row 0 has top-2 margin 0.5 (1/6 of the scale), row 1 0.1 (1/30). tie_margin is a fraction of
    # the scale: 0.05 makes row 1 a tie (0.15 > 0.1), 0.2 makes both ties (0.6 > 0.5).
    (0.0, 0.5, 0), (0.05, 1.0, 1), (0.2, 1.0, 2),
])
def test_ties_are_not_counted_in_the_argmax_agreement(margin, agreement, tied):
    crit = Criteria(atol=1.0, min_agreement=0.99, tie_margin=margin)
    out = REF.astype(np.float32)
    out[1] = out[1, [1, 0, 2]]  # row 1 (margin 0.1) flips; row 0 keeps its argmax
    c = compare(out, REF, crit)
    assert (c.argmax_agreement, c.tied_rows, c.rows) == (agreement, tied, 2 - tied)


def test_the_scale_is_the_artifacts_largest_logit(tmp_path):
    """validate() scales scale_rtol by the largest |reference logit| over ALL of an artifact's cases, so a case with
    small logits gets the same absolute bound as the others (int8's error follows activation ranges)."""
    raw = _raw(tmp_path)
    crit = Criteria(atol=0.0, scale_rtol=1e-6)
    res = validate({"exact": _Fake(raw, "exact")}, raw, _spec(), crit, cases=[(3, 16), (5, 7)])
    assert res["exact"].passed
    ref = np.array([[0.1, 0.0]])
    assert compare(np.array([[0.1 + 0.05, 0.0]], dtype=np.float32), ref, Criteria(atol=0, scale_rtol=0.1), 1.0).within
    assert not compare(np.array([[0.1 + 0.05, 0.0]], dtype=np.float32), ref, Criteria(atol=0, scale_rtol=0.1)).within


def test_scale_bound_follows_the_largest_logit():
    """scale_rtol adds a fraction of the case's largest |logit| to every element's bound (int8's error follows
    the activations' range): REF's max |ref| is 3, so scale_rtol 0.1 allows 0.3 + atol everywhere."""
    crit = Criteria(atol=0.01, scale_rtol=0.1)
    assert compare((REF + 0.30).astype(np.float32), REF, crit).within
    assert not compare((REF + 0.32).astype(np.float32), REF, crit).within
    assert np.allclose(crit.bound(REF), 0.31)


def _raw(tmp_path):
    write_checkpoint(tmp_path / "c", SynthSpec(**{**BASE, "family": "prumux_compressed"}))
    return read_raw(tmp_path / "c")


def _spec():
    return make_spec(family="prumux_compressed", num_instances=2, num_labels=3, id2label={}, seq_len=SEQ,
                     max_seq_len=SEQ, vocab_size=BASE["vocab"], head_size=8, layer_heads=[])


class _Fake:
    """A runner computing the reference itself, then spoiling it in one way."""

    def __init__(self, raw, how):
        self.raw, self.how, self.calls = raw, how, 0

    def run(self, feeds):
        self.calls += 1
        out = reference.forward(self.raw, feeds["input_ids"], feeds["attention_mask"], feeds["token_type_ids"],
                                seq_len=SEQ).numpy()
        if self.how == "offset":
            out = out + np.float32(2e-4)
        elif self.how == "nan":
            out[-1, 0] = np.nan
        elif self.how == "noisy":
            out = out + np.float32(1e-6 * self.calls)
        elif self.how == "mutates":
            feeds["input_ids"][:, 0] = 101 + 1
        elif self.how == "rows":
            out = out[:1]
        elif self.how == "swap":  # every row's top two classes exchanged
            idx = np.argsort(out, axis=1)
            r = np.arange(out.shape[0])
            out[r, idx[:, -1]], out[r, idx[:, -2]] = out[r, idx[:, -2]], out[r, idx[:, -1]].copy()
        return {"logits": out.astype(np.float32)}


@pytest.mark.parametrize("how, passed, finite, deterministic, unchanged", [
    ("exact", True, True, True, True),
    ("offset", False, True, True, True),
    ("nan", False, False, True, True),
    ("noisy", False, True, False, True),
    ("mutates", False, True, True, False),
    ("rows", False, True, True, True),
])
def test_validator_verdicts(how, passed, finite, deterministic, unchanged, tmp_path):
    raw = _raw(tmp_path)
    res = validate({"fake": _Fake(raw, how)}, raw, _spec(), criteria_for("ort-cpu", "fp32"), cases=[(3, 16)])
    case = res["fake"].cases[0]
    assert (case.passed, case.finite, case.deterministic, case.inputs_unchanged) == (
        passed, finite, deterministic, unchanged)
    if passed:
        require_passed(res)
    else:
        with pytest.raises(ValidationError, match="fake: 1/1 cases failed") as info:
            require_passed(res)
        assert info.value.exit_code == 3
        assert "FAIL" in info.value.table


def test_argmax_agreement_minimum_fails_an_artifact_within_the_bound(tmp_path):
    """A criterion with a minimum argmax agreement fails an artifact whose every element lies inside the bound
    but whose argmax disagrees (here: a bound of 10 logits, top two classes swapped)."""
    raw = _raw(tmp_path)
    loose = Criteria(atol=10.0, min_agreement=0.995)
    res = validate({"swap": _Fake(raw, "swap"), "exact": _Fake(raw, "exact")}, raw, _spec(), loose,
                   cases=[(3, 16), (5, 7)])
    assert all(c.passed for c in res["swap"].cases) and res["swap"].argmax_agreement == 0.0
    assert not res["swap"].passed and res["exact"].passed
    with pytest.raises(ValidationError, match="swap: argmax agreement 0.0000 < 0.995"):
        require_passed(res)
    doc = validation_document(res, _spec(), backend="tensorrt", precision="fp16")
    assert doc["passed"] is False and (doc["backend"], doc["precision"]) == ("tensorrt", "fp16")
    assert doc["artifacts"]["swap"]["criteria"] == {"atol": 10.0, "rtol": 0.0, "min_agreement": 0.995, "why": "",
                                                   "tie_margin": 0.0, "scale_rtol": 0.0}
    assert doc["artifacts"]["exact"]["argmax_agreement"] == 1.0
    assert doc["inputs"]["cases"] == [(3, 16), (5, 7)]
