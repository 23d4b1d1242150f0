"""Schedules per target family: ``cpu/`` (x86, Arm) and ``gpu/`` (CUDA, Jetson)."""

from __future__ import annotations

from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

from .apply_schedules import KERNEL_ATTR, UNSCHEDULED, ApplySchedules

__all__ = ["KERNEL_ATTR", "UNSCHEDULED", "ApplySchedules", "schedule_rules"]


def schedule_rules(target: Target) -> list[ScheduleRule]:
    """The default schedule rules for ``target``, most specific first, a fallback last."""
    if target.kind.name == "cuda":
        from . import gpu

        return gpu.default_rules(target)
    from . import cpu

    return cpu.default_rules(target)
