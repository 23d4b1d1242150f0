"""ApplyTuningRecords: schedule the PrimFuncs that have a winning record in the tuning cache.

Goes right before ``ApplySchedules`` (after ``FuseTIR``), inside ``with target:``. For a dense
PrimFunc whose workload key has a MetaSchedule record faster than the measured default schedule,
the record's trace is replayed; for a project sparse kernel, the kernel is generated again with
the tuned knobs (all calls of one kernel must agree, so the knobs with the least total time over
its calls win). The function is marked ``tirx.is_scheduled`` with ``"tvm_sparse.kernel"`` set to
``"<kernel> (tuned)"`` (for dense ones the rule whose knobs were tuned, or ``metaschedule`` for
MetaSchedule's own design space), so ``ApplySchedules`` leaves it alone; :meth:`mark_report`
returns the pass that, after ``CollectKernelReport``, marks the report rows those kernels compute.

Before (``ApplySchedules`` would pick ``Matmul``)::

    @T.prim_func(private=True)
    def matmul(A: T.Buffer((64, 64), "float32"), ...): ...

After::

    @T.prim_func(private=True)
    def matmul(...):
        T.func_attr({"tirx.is_scheduled": True, "tvm_sparse.kernel": "Matmul (tuned)"})
        ...  # Matmul's loop nest with the tuned knobs
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict

import tvm
from tvm import s_tir, tirx

from ..report import CompileReport
from ..schedules.apply_schedules import KERNEL_ATTR
from .cache import MIN_GAIN, Record, TuningCache
from .space import (
    METASCHEDULE_SPACE,
    SparseSite,
    dense_workload_key,
    keep_extra_attrs,
    sparse_sites,
)

__all__ = ["ApplyTuningRecords", "TUNED_SUFFIX"]

logger = logging.getLogger(__name__)

TUNED_SUFFIX = " (tuned)"


@tvm.transform.module_pass(opt_level=0, name="ApplyTuningRecords")
class ApplyTuningRecords:
    """Replace default schedules by tuned ones where the cache holds a faster record.

    Parameters
    ----------
    cache : TuningCache
        The records of this target; a missing, corrupt or foreign file is skipped with a warning.
    report : CompileReport, optional
        Gets a note naming the tuned kernels and the measured gain.
    """

    def __init__(self, cache: TuningCache, *, report: CompileReport | None = None):
        self.cache = cache
        self.report = report
        #: PrimFunc name -> (kernel, default seconds, tuned seconds) of this run.
        self.tuned: dict[str, tuple[str, float, float]] = {}

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        self.tuned = {}
        if not self.cache.records():
            if self.cache.problem and self.report is not None:
                self.report.notes.append(f"tuning cache skipped: {self.cache.problem}")
            return mod
        updates = {}
        for gvar, func in self._sparse(mod).items():
            updates[gvar] = func
        for gvar, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc) and gvar not in updates:
                new = self._dense(gvar.name_hint, func)
                if new is not None:
                    updates[gvar] = new
        for gvar, func in updates.items():
            mod[gvar] = func
        if self.tuned and self.report is not None:
            before = sum(t[1] for t in self.tuned.values())
            after = sum(t[2] for t in self.tuned.values())
            self.report.notes.append(
                f"{len(self.tuned)} kernel(s) ran tuned schedules from {self.cache.path} "
                f"(measured {before * 1e3:.3f} -> {after * 1e3:.3f} ms)"
            )
        return mod

    # -- sparse kernels ---------------------------------------------------------------------

    def _sparse(self, mod: tvm.IRModule) -> dict[tvm.ir.GlobalVar, tirx.PrimFunc]:
        by_gvar: dict[str, list[SparseSite]] = defaultdict(list)
        for site in sparse_sites(mod):
            by_gvar[site.gvar.name_hint].append(site)
        updates = {}
        for sites in by_gvar.values():
            choice = _choose_knobs([self.cache.for_workload(s.key) for s in sites])
            if choice is None:
                continue
            knobs, default_s, tuned_s = choice
            site = sites[0]
            try:
                func = site.spec.build(knobs)
            except (ValueError, TypeError) as err:
                logger.warning("tuned knobs %s of %s do not build: %s", knobs, site.spec.name, err)
                continue
            kernel = site.spec.name + TUNED_SUFFIX
            updates[site.gvar] = keep_extra_attrs(func, site.func).with_attr(KERNEL_ATTR, kernel)
            self.tuned[site.gvar.name_hint] = (kernel, default_s, tuned_s)
        return updates

    # -- dense PrimFuncs --------------------------------------------------------------------

    def _dense(self, name: str, func: tirx.PrimFunc) -> tirx.PrimFunc | None:
        if func.attrs is not None and func.attrs.get("tirx.is_scheduled", False):
            return None
        key = dense_workload_key(func)
        best = self.cache.best(key)
        if best is None or best.record is None:
            return None
        try:
            sch = _replay(func, best)
        except Exception as err:  # noqa: BLE001 - a stale record must not break compilation
            logger.warning("tuned record of %s does not apply, using the default: %s", name, err)
            return None
        default_s = min(r.latency_s for r in self.cache.for_workload(key) if r.is_default)
        space = str(best.extra.get("space", METASCHEDULE_SPACE))
        kernel = ("metaschedule" if space == METASCHEDULE_SPACE else space) + TUNED_SUFFIX
        self.tuned[name] = (kernel, default_s, best.latency_s)
        return sch.mod["main"].with_attr("tirx.is_scheduled", True).with_attr(KERNEL_ATTR, kernel)

    def mark_report(self, fusion) -> tvm.transform.Pass:
        """A pass for after ``CollectKernelReport`` that marks rows computed by tuned kernels."""

        @tvm.transform.module_pass(opt_level=0, name="MarkTunedOps")
        def _mark(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
            if self.report is None or not self.tuned:
                return mod
            for row in self.report.rows:
                prim = fusion.group_of(row.name) or fusion.prim_of.get(row.name, "")
                if prim in self.tuned and not row.kernel.endswith(TUNED_SUFFIX):
                    row.kernel = (row.kernel or self.tuned[prim][0]).removesuffix(
                        TUNED_SUFFIX
                    ) + TUNED_SUFFIX
            return mod

        return _mark


def _replay(func: tirx.PrimFunc, record: Record) -> s_tir.Schedule:
    from tvm.s_tir import meta_schedule as ms

    workload = ms.database.Workload(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}))
    trace = ms.database.TuningRecord.from_json(record.record, workload).trace
    sch = s_tir.Schedule(func)
    trace.apply_to_schedule(sch, remove_postproc=False)
    return sch


def _choose_knobs(per_site: list[list[Record]]) -> tuple[dict, float, float] | None:
    """The knobs with the least total time over all calls, if they beat the defaults' total."""
    default_total, totals = 0.0, None
    for records in per_site:
        defaults = [r.latency_s for r in records if r.is_default and math.isfinite(r.latency_s)]
        if not defaults:
            return None
        default_total += min(defaults)
        times: dict[str, float] = {}
        confirmed = any(r.source == "confirm" for r in records)
        for r in records:
            if r.is_default or r.knobs is None or not math.isfinite(r.latency_s):
                continue
            if confirmed and r.source != "confirm":
                continue  # re-measured winners decide (see TuningCache.best)
            canon = json.dumps(r.knobs, sort_keys=True)
            times[canon] = min(times.get(canon, math.inf), r.latency_s)
        if totals is None:
            totals = times
        else:
            totals = {k: totals[k] + t for k, t in times.items() if k in totals}
    if not totals:
        return None
    canon, best = min(totals.items(), key=lambda kv: kv[1])
    if best >= MIN_GAIN * default_total:
        return None
    return json.loads(canon), default_total, best
