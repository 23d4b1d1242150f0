"""ApplyTuningRecords: schedule the PrimFuncs that have a winning record in the tuning cache.

Goes right before ``ApplySchedules`` (after ``FuseTIR``), inside ``with target:``. For a dense
PrimFunc whose workload key has a MetaSchedule record faster than the measured default schedule,
the record's trace is replayed; for a project sparse kernel, the kernel is generated again with
the tuned knobs (all calls of one kernel must agree, so the knobs with the least total time over
its calls win). The function is marked ``tirx.is_scheduled`` with ``"tvm_sparse.kernel"`` set to
``"<kernel> (tuned)"`` (for dense ones the rule whose knobs were tuned, or ``metaschedule`` for
MetaSchedule's own design space), so ``ApplySchedules`` leaves it alone; :meth:`mark_report`
returns the pass that, after ``CollectKernelReport``, marks the report rows those kernels compute.

A record never makes a compile fail: one that cannot be applied (its knobs do not build, change
the kernel's signature, or its trace does not replay) is skipped with a
:class:`~.cache.TuningCacheWarning` naming it and a note in the report, and the next fastest
record, or the default schedule, is used; so is a sparse kernel whose shapes cannot be read.

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
import math
import warnings
from collections import defaultdict

import tvm
from tvm import s_tir, tirx

from ..report import CompileReport
from ..schedules.apply_schedules import KERNEL_ATTR
from .cache import MIN_GAIN, Record, TuningCache, TuningCacheWarning
from .space import (
    METASCHEDULE_SPACE,
    SparseSite,
    _shapes,
    dense_workload_key,
    keep_extra_attrs,
    sparse_sites,
)

__all__ = ["ApplyTuningRecords", "TUNED_SUFFIX"]

TUNED_SUFFIX = " (tuned)"


@tvm.transform.module_pass(opt_level=0, name="ApplyTuningRecords")
class ApplyTuningRecords:
    """Replace default schedules by tuned ones where the cache holds a faster record.

    Parameters
    ----------
    cache : TuningCache
        The records of this target; a missing, corrupt or foreign file, and any record that does
        not apply, is skipped with a warning.
    report : CompileReport, optional
        Gets a note naming the tuned kernels and the measured gain, and one per thing skipped.
    """

    def __init__(self, cache: TuningCache, *, report: CompileReport | None = None):
        self.cache = cache
        self.report = report
        #: PrimFunc name -> (kernel, default seconds, tuned seconds) of this run.
        self.tuned: dict[str, tuple[str, float, float]] = {}

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        self.tuned = {}
        records = self.cache.records()
        if self.report is not None:
            if self.cache.problem:
                self.report.notes.append(f"tuning cache skipped: {self.cache.problem}")
            self.report.notes.extend(f"tuning cache: {m}" for m in self.cache.skipped)
        if not records:
            return mod
        updates = {}
        for gvar, func in self._sparse(mod).items():
            updates[gvar] = func
        for gvar, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc) and gvar not in updates:
                try:
                    new = self._dense(gvar.name_hint, func)
                except Exception as err:  # noqa: BLE001 - records must not break compilation
                    self._skip(f"tuning records of {gvar.name_hint} skipped: {_error(err)}")
                    continue
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

    def _skip(self, message: str) -> None:
        warnings.warn(message, TuningCacheWarning, stacklevel=3)
        if self.report is not None:
            self.report.notes.append(message)

    # -- sparse kernels ---------------------------------------------------------------------

    def _sparse(self, mod: tvm.IRModule) -> dict[tvm.ir.GlobalVar, tirx.PrimFunc]:
        def unreadable(name: str, reason: str) -> None:
            self._skip(f"tuning records not applied to {name}: {reason}")

        by_gvar: dict[str, list[SparseSite]] = defaultdict(list)
        for site in sparse_sites(mod, on_skip=unreadable):
            by_gvar[site.gvar.name_hint].append(site)
        updates = {}
        for name, sites in by_gvar.items():
            try:
                new = self._sparse_kernel(sites)
            except Exception as err:  # noqa: BLE001 - records must not break compilation
                kernel = sites[0].spec.name
                self._skip(f"tuning records of {name} ({kernel}) skipped: {_error(err)}")
                continue
            if new is not None:
                updates[sites[0].gvar] = new
        return updates

    def _sparse_kernel(self, sites: list[SparseSite]) -> tirx.PrimFunc | None:
        """The kernel built with the fastest knobs that build one of the same signature."""
        per_site = [self.cache.for_workload(s.key) for s in sites]
        site = sites[0]
        for knobs, default_s, tuned_s in _rank_knobs(per_site):
            try:
                func = _build_in_place(site, knobs)
            except Exception as err:  # noqa: BLE001 - a bad record is skipped, the next one tried
                recs = [r for records in per_site for r in records if r.knobs == knobs]
                what = recs[0].describe() if recs else f"knobs {knobs}"
                self._skip(f"tuning record skipped: {what}: {_error(err)}")
                continue
            kernel = site.spec.name + TUNED_SUFFIX
            self.tuned[site.gvar.name_hint] = (kernel, default_s, tuned_s)
            return keep_extra_attrs(func, site.func).with_attr(KERNEL_ATTR, kernel)
        return None

    # -- dense PrimFuncs --------------------------------------------------------------------

    def _dense(self, name: str, func: tirx.PrimFunc) -> tirx.PrimFunc | None:
        if func.attrs is not None and func.attrs.get("tirx.is_scheduled", False):
            return None
        key = dense_workload_key(func)
        for best in self.cache.ranked(key):
            if best.record is None:
                continue
            try:
                sch = _replay(func, best)
            except Exception as err:  # noqa: BLE001 - a stale record must not break compilation
                self._skip(f"tuning record skipped: {best.describe()}: {_error(err)}")
                continue
            break
        else:
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


def _error(err: Exception) -> str:
    text = " ".join(str(err).split())  # one line: TVM errors can carry a traceback
    return f"{type(err).__name__}: {text if len(text) <= 300 else text[:300] + '...'}"


def _signature(func: tirx.PrimFunc) -> list[tuple[tuple[int, ...], str]]:
    return list(zip(_shapes(func), (str(p.ty.dtype) for p in func.params), strict=True))


def _build_in_place(site: SparseSite, knobs: dict) -> tirx.PrimFunc:
    """The kernel of ``site`` built with ``knobs``; raises unless it can replace the old one."""
    # Tuning keeps the knob names and the variant, which decides the operands' layout.
    if set(knobs) != set(site.knobs) or knobs.get("variant") != site.knobs.get("variant"):
        raise ValueError(f"knobs of another kernel than this one's {site.knobs}")
    func = site.spec.build(knobs)
    if _signature(func) != _signature(site.func):
        raise ValueError(f"they build parameters {_signature(func)}, not {_signature(site.func)}")
    return func


def _rank_knobs(per_site: list[list[Record]]) -> list[tuple[dict, float, float]]:
    """The knobs whose total time over all calls beats the defaults' total, fastest first, with
    that default total and their own."""
    default_total, totals = 0.0, None
    for records in per_site:
        defaults = [r.latency_s for r in records if r.is_default and math.isfinite(r.latency_s)]
        if not defaults:
            return []
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
    ranked = sorted((t, canon) for canon, t in (totals or {}).items())
    return [
        (json.loads(canon), default_total, t) for t, canon in ranked if t < MIN_GAIN * default_total
    ]
