"""tune_dense: MetaSchedule's evolutionary search, with its XGBoost cost model, over one dense
PrimFunc, its records written through to the cache.

The default schedule is measured first with the same builder and runner; the search's design
space is that of :mod:`.dense_task`; the fastest record is re-measured against the default.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import tvm

from ..schedules import ApplySchedules, schedule_rules
from ..schedules.cpu.base import CPUScheduleRule
from .apply_tuning_records import _replay
from .cache import Record, TuningCache
from .cache_database import cache_database
from .confirm_winner import confirm_winner, is_confirmed, verdict
from .dense_task import metaschedule_task, rule_space_task
from .measurer import Measurer
from .space import METASCHEDULE_SPACE, dense_workload_key, tunable_rule
from .tune_result import WorkloadResult, latency_text

__all__ = ["tune_dense"]


def tune_dense(
    name: str,
    func: tvm.tirx.PrimFunc,
    store: TuningCache,
    measurer: Measurer,
    *,
    trials: int,
    seed: int,
    say: Callable[[str], None],
    tag: str,
) -> WorkloadResult:
    """Measure the default schedule of ``func`` and up to ``trials - 1`` searched ones (records
    in the cache count), then re-measure the fastest against the default; ``tag`` starts the
    progress lines."""
    key = dense_workload_key(func)
    previous = store.for_workload(key)
    measured = 0
    rule = tunable_rule(func, measurer.schedule_target)
    space = type(rule).__name__ if rule is not None else METASCHEDULE_SPACE
    if not any(r.is_default for r in previous):
        ((_, seconds),) = list(measurer.measure([_default_schedule(func, measurer)]))
        store.append(Record("dense", key, "default", seconds, name=name))
        measured += 1
        say(f"{tag} {name} default schedule: {latency_text(seconds)}")
    tuned_before = [r for r in previous if not r.is_default and r.record is not None]
    remaining = trials - 1 - len(tuned_before)
    if remaining > 0:
        measured += _search(
            func,
            rule,
            store,
            measurer,
            remaining,
            seed,
            key=key,
            name=name,
            space=space,
            previous=tuned_before,
            say=say,
            tag=tag,
        )
    best = store.best(key)
    if best is not None and best.record is not None and not is_confirmed(store, key, best):
        default = _default_schedule(func, measurer)
        try:
            winner = _replay(func, best).mod["main"]
        except Exception as err:  # noqa: BLE001 - compile will not use it either
            say(f"{tag} {name}: the best record does not replay ({err}); default kept")
            return WorkloadResult.from_cache("dense", name, key, store, measured)
        same_space = {"space": best.extra["space"]} if "space" in best.extra else {}
        confirm = Record(
            "dense",
            key,
            "confirm",
            math.inf,
            name=name,
            knobs=best.knobs,
            record=best.record,
            extra=same_space,
        )
        measured += confirm_winner(
            measurer,
            store,
            (default, winner),
            (Record("dense", key, "default", math.inf, name=name), confirm),
        )
        say(f"{tag} {name} re-measured: {verdict(store, key)}")
    result = WorkloadResult.from_cache("dense", name, key, store, measured)
    result.space = space
    outcome = f"tuned {latency_text(result.best_s)}" if result.tuned else "default kept"
    say(f"{tag} {name}: default {latency_text(result.default_s)}, {outcome}")
    return result


def _default_schedule(func: tvm.tirx.PrimFunc, measurer: Measurer) -> tvm.tirx.PrimFunc:
    """``func`` as ``tvm_sparse.compile`` schedules it without tuning records."""
    rules = schedule_rules(measurer.schedule_target)
    return ApplySchedules(rules)._schedule(func, measurer.schedule_target)


def _search(
    func: tvm.tirx.PrimFunc,
    rule: CPUScheduleRule | None,
    store: TuningCache,
    measurer: Measurer,
    remaining: int,
    seed: int,
    *,
    key: str,
    name: str,
    space: str,
    previous: list[Record],
    say: Callable[[str], None],
    tag: str,
) -> int:
    """MetaSchedule's search over ``remaining`` trials; returns the candidates it measured."""
    from tvm.s_tir import meta_schedule as ms

    task_mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    if rule is not None:
        task = rule_space_task(rule, func, task_mod, store, key, measurer, seed)
        say(
            f"{tag} {name}: MetaSchedule over the {space} knobs, {len(task.knobs)} "
            f"unmeasured knob sets, {remaining} trials"
        )
    else:
        task = metaschedule_task(task_mod, measurer, remaining, seed, name)
        say(
            f"{tag} {name}: no knob-sampling rule claims it, MetaSchedule's own design "
            f"space, {remaining} trials"
        )
    if task.context is None:
        return 0
    database = cache_database(
        store,
        task_mod,
        key=key,
        name=name,
        previous=previous,
        space=space,
        knobs_of=task.knobs_of,
        say=say,
        tag=tag,
    )
    before = len(store.for_workload(key))
    ms.tune.tune_tasks(
        tasks=[task.context],
        task_weights=[1.0],
        work_dir=os.path.join(measurer.workdir, "ms"),
        max_trials_global=remaining,
        num_trials_per_iter=min(remaining, task.trials_per_iter),
        builder=measurer.builder,
        runner=measurer.runner,
        database=database,
        cost_model=task.cost_model,
        task_scheduler="round-robin",
    )
    return len(store.for_workload(key)) - before
