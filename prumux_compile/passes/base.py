"""Pass, PassReport and PassManager.

A pass is a pure function ``run(ir) -> (new_ir, PassReport)`` with a kebab-case ``name``; it never
modifies its input. The manager runs a fixed, declared order of passes and checks the IR invariants
(:func:`prumux_compile.ir.check_invariants`) after each one, raising
:class:`~prumux_compile.errors.IRInvariantError` naming the pass on a violation.

Cheap copies: a pass works on a *structural* copy of the IR (:func:`structural_copy`: new dataclasses, lists and
dicts; the tensors themselves shared), never on a deep copy of every weight (~440 MB per pass at BERT-base size).
That is sound because passes replace tensors (``a.wq = a.wq * s``), never write into them; :meth:`Pass.run` checks
it: a tensor of the input IR whose version counter moved (an in-place write such as ``mul_`` or ``t[...] = x``)
raises :class:`~prumux_compile.errors.IRInvariantError` naming the pass.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import asdict, dataclass, field

import torch

from prumux_compile.errors import IRInvariantError
from prumux_compile.ir import ModelIR, check_invariants


def ir_tensors(obj, out: list | None = None) -> list[torch.Tensor]:
    """Every tensor reachable from ``obj`` through dataclass fields, lists, tuples and dict values."""
    out = [] if out is None else out
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            ir_tensors(getattr(obj, f.name), out)
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            ir_tensors(x, out)
    elif isinstance(obj, dict):
        for x in obj.values():
            ir_tensors(x, out)
    return out


def structural_copy(ir: ModelIR) -> ModelIR:
    """A copy of ``ir`` whose containers (dataclasses, lists, dicts) are new and whose tensors are the same
    objects: rebinding a field of the copy never affects ``ir``; writing into a tensor would (see :meth:`Pass.run`)."""
    memo = {id(t): t for t in ir_tensors(ir)}
    return copy.deepcopy(ir, memo)


@dataclass
class PassReport:
    """What one pass did.

    Attributes:
        name: the pass name.
        changed: False when the pass had nothing to do.
        summary: one human-readable line.
        details: machine-readable specifics (e.g. heads removed per layer).
        params_before / params_after: :meth:`ModelIR.total_params` around the pass.
    """

    name: str
    changed: bool
    summary: str
    details: dict = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class Pass:
    """Base class: subclasses set ``name`` and implement :meth:`apply` on a structural copy of the IR (rebind
    fields and dict entries to new tensors; never write into a tensor)."""

    name: str = "pass"

    def applies(self, ir: ModelIR) -> bool:
        """False when the pass has nothing to do on ``ir`` (it then reports ``changed=False``)."""
        return True

    def apply(self, ir: ModelIR) -> tuple[str, dict]:
        """Rewrite the structure of ``ir`` (a structural copy: replace tensors, never mutate them); return
        ``(summary, details)``."""
        raise NotImplementedError

    def run(self, ir: ModelIR) -> tuple[ModelIR, PassReport]:
        """Apply the pass to a structural copy of ``ir``; ``ir`` itself is left as it was.

        Raises:
            IRInvariantError: the pass wrote into a tensor of its input (names the pass and the tensor shape).
        """
        before = ir.total_params()
        if not self.applies(ir):
            return ir, PassReport(self.name, False, "nothing to do", {}, before, before)
        tensors = ir_tensors(ir)
        versions = [t._version for t in tensors]
        new = structural_copy(ir)
        summary, details = self.apply(new)
        moved = [t for t, v in zip(tensors, versions) if t._version != v]
        if moved:
            raise IRInvariantError(f"pass {self.name!r} wrote into {len(moved)} tensor(s) of its input IR in place "
                                   f"(first: shape {list(moved[0].shape)}); passes must replace tensors")
        new.history.append(self.name)
        return new, PassReport(self.name, True, summary, details, before, new.total_params())


class PassManager:
    """Runs passes in order, checking invariants after each.

    Args:
        passes: the passes, in the order to run.
    """

    def __init__(self, passes: list[Pass]):
        self.passes = list(passes)

    def run(self, ir: ModelIR) -> tuple[ModelIR, list[PassReport]]:
        """Run every pass; returns the final IR and one report per pass.

        Raises:
            IRInvariantError: after the first pass whose output violates an invariant (message names it).
        """
        check_invariants(ir, where="input IR")
        reports = []
        for p in self.passes:
            ir, report = p.run(ir)
            check_invariants(ir, where=f"after pass {p.name!r}")
            reports.append(report)
        return ir, reports
