"""ApplySchedules: schedule every TIR function with the first rule that claims it."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import tvm
from tvm import tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

from ..targets.backend import backend_of
from .schedule_problem import schedule_problem

__all__ = ["KERNEL_ATTR", "PASSED_OVER_ATTR", "UNSCHEDULED", "ApplySchedules", "ScheduleError"]

#: PrimFunc attribute naming the rule (or hand-written kernel) that produced its schedule.
KERNEL_ATTR = "tvm_sparse.kernel"
#: The kernel name recorded for a function no rule could schedule.
UNSCHEDULED = "unscheduled"
#: PrimFunc attribute: the rules skipped on the function (they raised or produced a schedule
#: that would not build) before one scheduled it, and why.
PASSED_OVER_ATTR = "tvm_sparse.rules_passed_over"


@tvm.transform.module_pass(opt_level=0, name="ApplySchedules")
class ApplySchedules:
    """Schedule each unscheduled PrimFunc with the first :class:`ScheduleRule` that applies.

    Works like dlight's ``ApplyDefaultSchedule`` and also records the rule's class name in the
    ``"tvm_sparse.kernel"`` attribute of the function, so the compile report (and an IR dump)
    tells which schedule each kernel got. Functions already marked ``tirx.is_scheduled`` (the
    project's hand-written sparse kernels) are left alone.

    A rule that raises on a function (dlight's GPU rules assert on some fused epilogues), or
    returns a schedule that would not build (:func:`schedule_problem`: not well formed, loops
    left unbound on a GPU, over the device's threads or shared memory), passes it to the next
    rule, with a warning; the function records which rules were skipped and why, and which one
    scheduled it (``"tvm_sparse.rules_passed_over"``, in the compile report's notes). Where no
    rule gives a valid schedule, the family's last resort does: dlight's ``Fallback`` (every
    loop nest bound to threads) on GPUs, the loop nest as it is (``"unscheduled"``) on CPUs.

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
            updates[gvar] = self._schedule(func, target, gvar.name_hint)
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod

    def _schedule(self, func: tirx.PrimFunc, target: Target, name: str = "") -> tirx.PrimFunc:
        name = name or _name(func)
        skipped: list[str] = []
        tried: set[type] = set()
        for rule in self.rules:
            tried.add(type(rule))
            scheduled = _try(rule, func, target, skipped)
            if scheduled is not None:
                return _marked(name, scheduled, type(rule).__name__, skipped)
        last = _last_resort(target)
        if last is not None and type(last) not in tried:
            scheduled = _try(last, func, target, skipped)
            if scheduled is not None:
                return _marked(name, scheduled, type(last).__name__, skipped, " (last resort)")
        # A CPU loop nest builds as it is; on a GPU only one that launches its own threads.
        problem = schedule_problem(func, target) if last is not None else None
        if problem:
            raise ScheduleError(
                f"{name}: no schedule rule produced a valid schedule for {target.kind.name} "
                f"({'; '.join(skipped) or 'no rule applies'}); as it is: {problem}"
            )
        if skipped:
            note = f"{'; '.join(skipped)}; left unscheduled (the loop nest as legalized)"
            warnings.warn(f"{name}: {note}", RuntimeWarning, stacklevel=3)
            func = func.with_attr(PASSED_OVER_ATTR, note)
        return func.with_attr(KERNEL_ATTR, UNSCHEDULED)


class ScheduleError(RuntimeError):
    """No rule, the last resort included, gives a GPU function a schedule that builds."""


def _try(
    rule: ScheduleRule, func: tirx.PrimFunc, target: Target, skipped: list[str]
) -> tirx.PrimFunc | None:
    """``rule``'s schedule of ``func``, or ``None`` where it declines, raises or produces one
    that would not build (appending why to ``skipped``)."""
    rule_name = type(rule).__name__
    try:
        sch = rule.apply(func, target, False)
    except Exception as err:  # noqa: BLE001 - the next rule may schedule it
        why = str(err).strip().splitlines()
        skipped.append(f"{rule_name} raised {type(err).__name__}"
                       + (f": {why[-1][:160]}" if why else ""))  # fmt: skip
        return None
    if sch is None:
        return None
    if isinstance(sch, list):
        sch = sch[0]
    scheduled = sch.mod["main"]
    problem = schedule_problem(scheduled, target)
    if problem:
        skipped.append(f"{rule_name} produced an invalid schedule: {problem}")
        return None
    return scheduled


def _marked(
    name: str,
    scheduled: tirx.PrimFunc,
    rule_name: str,
    skipped: list[str],
    how: str = "",
) -> tirx.PrimFunc:
    scheduled = scheduled.with_attr("tirx.is_scheduled", True)
    scheduled = scheduled.with_attr(KERNEL_ATTR, rule_name)
    if skipped:
        note = f"{'; '.join(skipped)}; scheduled by {rule_name}{how}"
        warnings.warn(f"{name}: {note}", RuntimeWarning, stacklevel=4)
        scheduled = scheduled.with_attr(PASSED_OVER_ATTR, note)
    return scheduled


def _last_resort(target: Target) -> ScheduleRule | None:
    """The family's simple schedule for a function no rule scheduled validly: dlight's GPU
    ``Fallback`` (binds every loop nest to blocks and threads); ``None`` on CPUs, where the
    unscheduled loop nest is valid code."""
    backend = backend_of(target, allow_none=True)
    return _LAST_RESORT[backend.family]() if backend is not None else None


#: Each target family's last resort (:attr:`~tvm_sparse.targets.Backend.family`).
_LAST_RESORT = {"cpu": lambda: None, "cuda": dl.gpu.Fallback}


def _name(func: tirx.PrimFunc) -> str:
    return str(func.attrs.get("global_symbol", "") if func.attrs else "") or "a kernel"


def _is_scheduled(func: tirx.PrimFunc) -> bool:
    return bool(func.attrs) and bool(func.attrs.get("tirx.is_scheduled", False))
