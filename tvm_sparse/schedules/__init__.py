"""Schedules per target family: ``cpu/`` (x86, Arm) and ``gpu/`` (CUDA, Jetson)."""

from __future__ import annotations

from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

from ..targets.backend import CPU, backend_of
from .apply_schedules import KERNEL_ATTR, UNSCHEDULED, ApplySchedules

__all__ = ["KERNEL_ATTR", "UNSCHEDULED", "ApplySchedules", "schedule_rules"]


def schedule_rules(target: Target) -> list[ScheduleRule]:
    """The default schedule rules for ``target``, most specific first, a fallback last; the CPU
    rules (which decline them) for kinds no backend compiles."""
    return (backend_of(target, allow_none=True) or CPU).schedule_rules(target)
