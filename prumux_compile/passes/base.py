"""Pass, PassReport and PassManager.

A pass is a pure function ``run(ir) -> (new_ir, PassReport)`` with a kebab-case ``name``; it never
modifies its input. The manager runs a fixed, declared order of passes and checks the IR invariants
(:func:`prumux_compile.ir.check_invariants`) after each one, raising
:class:`~prumux_compile.errors.IRInvariantError` naming the pass on a violation (DESIGN.md "Contracts").
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from prumux_compile.ir import ModelIR, check_invariants


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
    """Base class: subclasses set ``name`` and implement :meth:`apply` on a private copy of the IR."""

    name: str = "pass"

    def applies(self, ir: ModelIR) -> bool:
        """False when the pass has nothing to do on ``ir`` (it then reports ``changed=False``)."""
        return True

    def apply(self, ir: ModelIR) -> tuple[str, dict]:
        """Rewrite ``ir`` in place (it is already a copy); return ``(summary, details)``."""
        raise NotImplementedError

    def run(self, ir: ModelIR) -> tuple[ModelIR, PassReport]:
        before = ir.total_params()
        if not self.applies(ir):
            return ir, PassReport(self.name, False, "nothing to do", {}, before, before)
        new = ir.clone()
        summary, details = self.apply(new)
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
