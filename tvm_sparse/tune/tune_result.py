"""TuneResult and WorkloadResult: what :func:`~tvm_sparse.tune.autotune` measured and kept."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .cache import MIN_GAIN, TuningCache

__all__ = ["TuneResult", "WorkloadResult", "latency_text"]


@dataclass
class WorkloadResult:
    """Tuning outcome of one workload."""

    kind: str
    name: str
    key: str
    default_s: float
    best_s: float
    measured: int  # candidates measured in this run
    total: int  # candidates in the cache
    #: Dense: the rule whose knobs were searched, or ``"post-order-apply"`` (MetaSchedule's own
    #: design space); sparse: ``""`` (the kernel's knob candidates).
    space: str = ""

    @classmethod
    def from_cache(
        cls, kind: str, name: str, key: str, store: TuningCache, measured: int
    ) -> WorkloadResult:
        """The outcome as the cache holds it: the fastest default and the record compile uses."""
        recs = store.for_workload(key)
        defaults = [r.latency_s for r in recs if r.is_default] or [math.inf]
        best = store.best(key)
        tuned = best.latency_s if best is not None else math.inf
        return cls(kind, name, key, min(defaults), tuned, measured, len(recs))

    @property
    def tuned(self) -> bool:
        """Whether compile will use a tuned schedule (it beat a measured default)."""
        return math.isfinite(self.default_s) and self.best_s < MIN_GAIN * self.default_s

    @property
    def speedup(self) -> float:
        if not self.tuned or not math.isfinite(self.default_s) or self.best_s <= 0:
            return 1.0
        return self.default_s / self.best_s


@dataclass
class TuneResult:
    """What :func:`autotune` did: per workload, default and best latency; trials; time."""

    target: str
    cache_path: str
    seconds: float = 0.0
    workloads: list[WorkloadResult] = field(default_factory=list)

    @property
    def trials(self) -> int:
        """Candidates measured in this run (defaults included)."""
        return sum(w.measured for w in self.workloads)

    def table(self) -> str:
        lines = [
            "| kind | workload | default ms | tuned ms | speedup | measured | in cache |",
            "|---|---|---|---|---|---|---|",
        ]
        for w in self.workloads:
            best = w.best_s if w.tuned else w.default_s
            lines.append(
                f"| {w.kind} | {w.name} | {w.default_s * 1e3:.4f} | {best * 1e3:.4f} | "
                f"{w.speedup:.2f}x | {w.measured} | {w.total} |"
            )
        lines.append(
            f"\n{self.trials} candidates measured in {self.seconds:.0f} s; records in "
            f"{self.cache_path}"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def latency_text(seconds: float) -> str:
    """A measured latency for progress lines: milliseconds, or ``failed`` for infinity."""
    return f"{seconds * 1e3:.4f} ms" if math.isfinite(seconds) else "failed"
