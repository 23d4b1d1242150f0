"""Sparsity schedules for gradual pruning: the target sparsity after ``step`` of ``total``."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["SCHEDULES", "constant_schedule", "cubic_schedule", "linear_schedule", "get_schedule"]

Schedule = Callable[[int, int, float, float], float]


def constant_schedule(step: int, total: int, initial: float, final: float) -> float:
    """One shot: the final sparsity from the first step on."""
    return final


def linear_schedule(step: int, total: int, initial: float, final: float) -> float:
    """Sparsity grows linearly from ``initial`` to ``final`` over ``total`` steps."""
    t = min(max(step / max(total, 1), 0.0), 1.0)
    return initial + (final - initial) * t


def cubic_schedule(step: int, total: int, initial: float, final: float) -> float:
    """Zhu and Gupta's gradual schedule: ``s_f + (s_i - s_f) (1 - t/n)^3``.

    Prunes fast while many redundant weights remain and slowly near the end, leaving
    fine-tuning steps between to recover.
    """
    t = min(max(step / max(total, 1), 0.0), 1.0)
    return final + (initial - final) * (1.0 - t) ** 3


#: Schedule name -> function ``(step, total, initial, final) -> sparsity``.
SCHEDULES: dict[str, Schedule] = {
    "oneshot": constant_schedule,
    "linear": linear_schedule,
    "cubic": cubic_schedule,
}


def get_schedule(schedule: str | Schedule) -> Schedule:
    """Look a schedule up by name, or pass a callable through.

    Raises
    ------
    ValueError
        If the name is unknown; the message lists the valid ones.
    """
    if callable(schedule):
        return schedule
    if isinstance(schedule, str) and schedule in SCHEDULES:
        return SCHEDULES[schedule]
    raise ValueError(f"unknown schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
