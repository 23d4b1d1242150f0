"""Schedules per target family: ``cpu/`` (x86, Arm) and ``gpu/`` (CUDA, Jetson)."""

from __future__ import annotations

from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

from ..targets.backend import backend_of
from . import cpu, gpu
from .apply_schedules import KERNEL_ATTR, UNSCHEDULED, ApplySchedules, ScheduleError
from .schedule_problem import schedule_problem

__all__ = [
    "KERNEL_ATTR",
    "UNSCHEDULED",
    "ApplySchedules",
    "ScheduleError",
    "schedule_problem",
    "schedule_rules",
]


def schedule_rules(target: Target) -> list[ScheduleRule]:
    """The default schedule rules for ``target``, most specific first, a fallback last; the CPU
    rules (which decline them) for kinds no backend compiles."""
    backend = backend_of(target, allow_none=True)
    return _RULES[backend.family if backend else "cpu"](target)


#: Each target family's default rules (:attr:`~tvm_sparse.targets.Backend.family`).
_RULES = {"cpu": cpu.default_rules, "cuda": gpu.default_rules}
