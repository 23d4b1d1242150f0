"""cache_database: a MetaSchedule database that writes every committed record to the cache.

MetaSchedule's search commits each measured candidate to its database; this one keeps them in
memory for the search and appends each to the :class:`~.cache.TuningCache` at once, so a
stopped tuner loses at most the candidate it was measuring.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import tvm
import tvm_ffi

from .cache import Record, TuningCache, encode_tvm_json
from .tune_result import latency_text

__all__ = ["cache_database", "tuning_record_json"]


def cache_database(
    store: TuningCache,
    task_mod: tvm.IRModule,
    *,
    key: str,
    name: str,
    previous: list[Record],
    space: str,
    knobs_of: Callable[[Any], dict[str, int] | None],
    say: Callable[[str], None],
    tag: str,
):
    """A MetaSchedule database in memory that writes every committed record to the cache.

    Each record notes the design space it comes from (``space``) and, for a rule's knob space,
    the knobs (``knobs_of(record)``), which a resumed run skips. The ``previous`` records of
    the workload warm-start the search and are not written again.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.database import MemoryDatabase, PyDatabase, TuningRecord

    @derived_object
    class _CacheDatabase(PyDatabase):
        def __init__(self):
            super().__init__()
            self.inner = MemoryDatabase()

        def has_workload(self, mod):
            return self.inner.has_workload(mod)

        def commit_workload(self, mod):
            return self.inner.commit_workload(mod)

        def commit_tuning_record(self, record):
            self.inner.commit_tuning_record(record)
            secs = [float(s) for s in (record.run_secs or [])]
            seconds = min(secs) if secs and max(secs) < 1e9 else math.inf
            if tvm_ffi.structural_equal(record.workload.mod, task_mod):
                knobs = knobs_of(record)
                rec = Record(
                    "dense",
                    key,
                    "metaschedule",
                    seconds,
                    name=name,
                    knobs=knobs,
                    record=tuning_record_json(record),
                    extra={"space": space},
                )
                store.append(rec)
                trial = f"trial {len(store.for_workload(key))}" + (f" {knobs}" if knobs else "")
                say(f"{tag} {name} {trial}: {latency_text(seconds)}")

        def get_top_k(self, workload, top_k):
            return self.inner.get_top_k(workload, top_k)

        def get_all_tuning_records(self):
            return self.inner.get_all_tuning_records()

        def __len__(self):
            return len(self.inner)

    database = _CacheDatabase()
    workload = database.inner.commit_workload(task_mod)
    for rec in previous:
        database.inner.commit_tuning_record(TuningRecord.from_json(rec.record, workload))
    return database


def tuning_record_json(record) -> Any:
    """``TuningRecord.as_json()`` as plain JSON (see :func:`~.cache.encode_tvm_json`)."""
    from tvm.s_tir.meta_schedule import _ffi_api

    # ``TuningRecord.as_json`` refuses the IndexMap of a ``transform_layout`` in the trace.
    return encode_tvm_json(_ffi_api.TuningRecordAsJSON(record))
