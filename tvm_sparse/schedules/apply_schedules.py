"""ApplySchedules: schedule every TIR function with the first rule that claims it."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import tvm
from tvm import tirx
from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

__all__ = ["ApplySchedules", "KERNEL_ATTR", "PASSED_OVER_ATTR", "UNSCHEDULED"]

#: PrimFunc attribute naming the rule (or hand-written kernel) that produced its schedule.
KERNEL_ATTR = "tvm_sparse.kernel"
#: The kernel name recorded for a function no rule could schedule.
UNSCHEDULED = "unscheduled"
#: PrimFunc attribute: the rules that raised on the function before one scheduled it, and why.
PASSED_OVER_ATTR = "tvm_sparse.rules_passed_over"


@tvm.transform.module_pass(opt_level=0, name="ApplySchedules")
class ApplySchedules:
    """Schedule each unscheduled PrimFunc with the first :class:`ScheduleRule` that applies.

    Works like dlight's ``ApplyDefaultSchedule`` and also records the rule's class name in the
    ``"tvm_sparse.kernel"`` attribute of the function, so the compile report (and an IR dump)
    tells which schedule each kernel got. Functions already marked ``tirx.is_scheduled`` (the
    project's hand-written sparse kernels) are left alone. A rule that raises on a function
    (dlight's GPU rules assert on some fused epilogues) passes it to the next rule, with a
    warning, and the function records why (``"tvm_sparse.rules_passed_over"``, in the compile
    report's notes); the last rule of each family is a plain one that schedules anything. A
    function no rule claims keeps its loop nest and is marked ``"unscheduled"``.

    Goes after ``FuseTIR`` in a Relax pipeline, inside ``with target:``.
    """

    def __init__(self, rules: Sequence[ScheduleRule]):
        self.rules = list(rules)

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updates = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or _is_scheduled(func):
                continue
            target = func.attrs.get("target") if func.attrs else None
            target = target or Target.current(allow_none=False)
            updates[gvar] = self._schedule(func, target)
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod

    def _schedule(self, func: tirx.PrimFunc, target: Target) -> tirx.PrimFunc:
        passed_over = []
        for rule in self.rules:
            try:
                sch = rule.apply(func, target, False)
            except Exception as err:  # noqa: BLE001 - the next rule may schedule it
                why = str(err).strip().splitlines()
                passed_over.append(f"{type(rule).__name__} raised {type(err).__name__}"
                                   + (f": {why[-1][:160]}" if why else ""))  # fmt: skip
                continue
            if sch is None:
                continue
            if isinstance(sch, list):
                sch = sch[0]
            scheduled = sch.mod["main"].with_attr("tirx.is_scheduled", True)
            scheduled = scheduled.with_attr(KERNEL_ATTR, type(rule).__name__)
            if passed_over:
                name = func.attrs.get("global_symbol", "") if func.attrs else ""
                note = f"{'; '.join(passed_over)}; scheduled by {type(rule).__name__}"
                warnings.warn(f"{name or 'a kernel'}: {note}", RuntimeWarning, stacklevel=2)
                scheduled = scheduled.with_attr(PASSED_OVER_ATTR, note)
            return scheduled
        return func.with_attr(KERNEL_ATTR, UNSCHEDULED)


def _is_scheduled(func: tirx.PrimFunc) -> bool:
    return bool(func.attrs) and bool(func.attrs.get("tirx.is_scheduled", False))
