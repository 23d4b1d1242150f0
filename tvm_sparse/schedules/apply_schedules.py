"""ApplySchedules: schedule every TIR function with the first rule that claims it."""

from __future__ import annotations

from collections.abc import Sequence

import tvm
from tvm import tirx
from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

__all__ = ["ApplySchedules", "KERNEL_ATTR", "UNSCHEDULED"]

#: PrimFunc attribute naming the rule (or hand-written kernel) that produced its schedule.
KERNEL_ATTR = "tvm_sparse.kernel"
#: The kernel name recorded for a function no rule could schedule.
UNSCHEDULED = "unscheduled"


@tvm.transform.module_pass(opt_level=0, name="ApplySchedules")
class ApplySchedules:
    """Schedule each unscheduled PrimFunc with the first :class:`ScheduleRule` that applies.

    Works like dlight's ``ApplyDefaultSchedule`` and also records the rule's class name in the
    ``"tvm_sparse.kernel"`` attribute of the function, so the compile report (and an IR dump)
    tells which schedule each kernel got. Functions already marked ``tirx.is_scheduled`` (the
    project's hand-written sparse kernels) are left alone. A function no rule claims keeps its
    loop nest and is marked ``"unscheduled"``.

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
        for rule in self.rules:
            sch = rule.apply(func, target, False)
            if sch is None:
                continue
            if isinstance(sch, list):
                sch = sch[0]
            scheduled = sch.mod["main"].with_attr("tirx.is_scheduled", True)
            return scheduled.with_attr(KERNEL_ATTR, type(rule).__name__)
        return func.with_attr(KERNEL_ATTR, UNSCHEDULED)


def _is_scheduled(func: tirx.PrimFunc) -> bool:
    return bool(func.attrs) and bool(func.attrs.get("tirx.is_scheduled", False))
