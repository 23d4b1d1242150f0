"""DenseTask: what MetaSchedule's ``tune_tasks`` gets for one dense workload.

The design space is the knob space of the rule that schedules the PrimFunc by default
(:func:`rule_space_task`), so a tuned schedule is that rule's schedule with other knobs; a
PrimFunc no knob-sampling rule claims is searched in MetaSchedule's own space
(:func:`metaschedule_task`: ``PostOrderApply`` with the default llvm rules).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import tvm

from ..schedules.cpu.base import CPUScheduleRule
from ..targets.facts import num_cores
from .cache import TuningCache
from .measurer import Measurer
from .space import canonical_knobs, rule_space

__all__ = ["DenseTask", "metaschedule_task", "rule_space_task"]


@dataclass
class DenseTask:
    """What ``tune_tasks`` needs for one dense workload, and the knobs of its design spaces."""

    context: Any  # TuneContext, or None when nothing is left to measure
    cost_model: Any
    trials_per_iter: int
    #: ``str`` of a design space's simplified trace -> the knobs that wrote it.
    knobs: dict[str, dict[str, int]] = field(default_factory=dict)

    def knobs_of(self, record) -> dict[str, int] | None:
        """The knobs of a MetaSchedule tuning record of this task (``None``: not a rule's)."""
        return self.knobs.get(_trace_key(record.trace)) if self.knobs else None


def metaschedule_task(
    task_mod: tvm.IRModule, measurer: Measurer, remaining: int, seed: int, name: str
) -> DenseTask:
    """MetaSchedule's own design space, for a PrimFunc that no knob-sampling rule claims."""
    from tvm.s_tir import meta_schedule as ms

    context = _tune_context(
        measurer,
        task_mod,
        "post-order-apply",
        ms.search_strategy.EvolutionarySearch(population_size=min(512, max(64, 8 * remaining))),
        name,
        seed,
    )
    return DenseTask(context, "xgb", 16)


def rule_space_task(
    rule: CPUScheduleRule,
    func: tvm.tirx.PrimFunc,
    task_mod: tvm.IRModule,
    store: TuningCache,
    key: str,
    measurer: Measurer,
    seed: int,
) -> DenseTask:
    """A task whose design spaces are the unmeasured points of ``rule``'s knob space.

    MetaSchedule replays traces, not the Python that wrote them, so it cannot re-draw a knob
    decision that the rule read with ``sch.get``: each point of the space is a design space of
    its own (its ``sample_categorical`` instructions are dead code that MetaSchedule's trace
    simplification drops) and no mutator applies, so the genetic stage is off. The search
    samples the design spaces, ranks the samples with the XGBoost model, measures the best
    and a few random ones, retrains, and repeats. The model learns from the first batch on
    (MetaSchedule's default waits for 100 measurements, more than most budgets) and starts
    with the default schedule's measurement.
    """
    from tvm.s_tir import meta_schedule as ms

    points = rule_space(rule, func, measurer.schedule_target)
    done = {canonical_knobs(r.knobs) for r in store.for_workload(key) if r.knobs is not None}
    fresh = [p for p in points[1:] if canonical_knobs(p.knobs) not in done]  # [0]: the default
    if not fresh:
        return DenseTask(None, None, 0)
    spaces = [p.sch for p in fresh]
    context = _tune_context(
        measurer,
        task_mod,
        ms.space_generator.ScheduleFn(
            lambda _sch: [sch.copy() for sch in spaces],
            sch_rules=[],
            postprocs=[],  # the rule's schedule is complete, as tvm_sparse.compile uses it
            mutator_probs={},
        ),
        ms.search_strategy.EvolutionarySearch(
            population_size=min(512, max(64, 2 * len(spaces))),
            init_measured_ratio=0.0,  # measured points are design spaces no more
            init_min_unmeasured=min(50, len(spaces)),
            genetic_num_iters=0,
        ),
        f"{type(rule).__name__} knobs",
        seed,
    )
    model = ms.cost_model.XGBModel(num_warmup_samples=8)
    defaults = [r.latency_s for r in store.for_workload(key) if r.is_default]
    if defaults and math.isfinite(min(defaults)):
        candidate = ms.MeasureCandidate(
            points[0].sch, ms.arg_info.ArgInfo.from_entry_func(task_mod, remove_preproc=True)
        )
        model.update(context, [candidate], [ms.runner.RunnerResult([min(defaults)], None)])
    knobs = {_trace_key(p.sch.trace): p.knobs for p in fresh}
    return DenseTask(context, model, 8, knobs)


def _tune_context(measurer: Measurer, task_mod, space_generator, search_strategy, name, seed):
    from tvm.s_tir import meta_schedule as ms

    return ms.TuneContext(
        mod=task_mod,
        target=measurer.target,
        space_generator=space_generator,
        search_strategy=search_strategy,
        task_name=name,
        rand_state=seed,
        num_threads=max(num_cores(measurer.target), 1),
    )


def _trace_key(trace) -> str:
    return str(trace.simplified(remove_postproc=True))
