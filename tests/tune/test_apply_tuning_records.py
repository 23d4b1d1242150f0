"""ApplyTuningRecords: records in the cache replace default schedules; the report says so."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

import tvm_sparse
from tvm_sparse.schedules import ApplySchedules, schedule_rules
from tvm_sparse.targets import resolve_target
from tvm_sparse.tune import ApplyTuningRecords, TuningCache
from tvm_sparse.tune.cache import Record
from tvm_sparse.tune.cache_database import tuning_record_json
from tvm_sparse.tune.space import (
    _knobs_of,
    dense_workload_key,
    rule_space,
    sparse_sites,
    tunable_rule,
)
from tvm_sparse.tune.workloads import schedule_input


def _input_module(model):
    net, x = model
    return schedule_input(net, resolve_target("x86"), (x,), None, False, "auto")


def _fill_cache(cache, mod, target):
    """A faster sparse candidate and a 'tuned' dense trace (the default rule's own trace)."""
    (site,) = sparse_sites(mod)
    cache.append(Record("sparse", site.key, "default", 2e-5, knobs=site.knobs))
    faster = {**site.knobs, "m_tile": 3}
    cache.append(Record("sparse", site.key, "candidate", 1e-5, knobs=faster))
    (name,) = [g.name_hint for g, f in mod.functions_items() if g.name_hint == "matmul"]
    func = mod[name]
    rule = next(r for r in schedule_rules(target) if r.apply(func, target, False) is not None)
    sch = rule.apply(func, target, False)
    workload = ms.database.Workload(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}))
    record = ms.database.TuningRecord(sch.trace, workload, [1e-5], target, [])
    key = dense_workload_key(func)
    cache.append(Record("dense", key, "default", 2e-5, name=name))
    cache.append(
        Record("dense", key, "metaschedule", 1e-5, name=name, record=tuning_record_json(record))
    )
    return site, faster


def test_pass_replaces_kernels_that_have_faster_records(model, cache, target):
    mod = _input_module(model)
    site, faster = _fill_cache(cache, mod, target)
    with target:
        out = ApplyTuningRecords(cache)(mod)
    sparse = out[site.gvar.name_hint]
    assert str(sparse.attrs["tvm_sparse.kernel"]) == "bsr_matmul[16x1] (tuned)"
    assert _knobs_of(sparse) == faster
    assert int(sparse.attrs["tvm_sparse.flops"]) == int(site.func.attrs["tvm_sparse.flops"])
    dense = out["matmul"]
    assert str(dense.attrs["tvm_sparse.kernel"]) == "metaschedule (tuned)"
    assert bool(dense.attrs["tirx.is_scheduled"])
    with target:
        scheduled = ApplySchedules(schedule_rules(target))(out)
    assert str(scheduled["matmul"].attrs["tvm_sparse.kernel"]) == "metaschedule (tuned)"


def test_a_record_of_the_rule_space_replays_to_the_rule_schedule(model, cache, target):
    mod = _input_module(model)
    func = mod["matmul"]
    rule = tunable_rule(func, target)
    point = rule_space(rule, func, target)[-1]
    assert any(point.decisions)
    # What MetaSchedule measures and commits for that design space: its simplified trace,
    # replayed on the task, then post-processed (no postprocs in the rule space).
    task = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    sch = s_tir.Schedule(task)
    point.sch.trace.simplified(remove_postproc=True).apply_to_schedule(sch, remove_postproc=True)
    sch.enter_postproc()
    record = ms.database.TuningRecord(sch.trace, ms.database.Workload(task), [1e-5], target, [])
    key = dense_workload_key(func)
    cache.append(Record("dense", key, "default", 2e-5, name="matmul"))
    extra = {"space": "Matmul"}
    cache.append(
        Record(
            "dense",
            key,
            "metaschedule",
            1e-5,
            knobs=point.knobs,
            record=tuning_record_json(record),
            extra=extra,
        )
    )
    with target:  # read back from the file, as compile does
        out = ApplyTuningRecords(TuningCache(target, path=cache.path))(mod)
    replayed = out["matmul"]
    assert str(replayed.attrs["tvm_sparse.kernel"]) == "Matmul (tuned)"
    tvm.ir.assert_structural_equal(
        replayed.without_attr("tirx.is_scheduled").without_attr("tvm_sparse.kernel"),
        point.sch.mod["main"],
    )


def test_slower_records_are_not_used(model, cache, target):
    mod = _input_module(model)
    (site,) = sparse_sites(mod)
    cache.append(Record("sparse", site.key, "default", 1e-5, knobs=site.knobs))
    cache.append(Record("sparse", site.key, "candidate", 3e-5, knobs={**site.knobs, "m_tile": 3}))
    with target:
        out = ApplyTuningRecords(cache)(mod)
    assert str(out[site.gvar.name_hint].attrs["tvm_sparse.kernel"]) == "bsr_matmul[16x1]"


def test_compile_picks_up_records_and_reports_tuned_ops(model, cache, target):
    net, x = model
    _fill_cache(cache, _input_module(model), target)
    compiled = tvm_sparse.compile(net, "x86", example_inputs=(x,), tuning_cache=cache.path)
    tuned = [r for r in compiled.report.rows if r.kernel.endswith("(tuned)")]
    assert {r.kernel for r in tuned} == {"bsr_matmul[16x1] (tuned)", "metaschedule (tuned)"}
    assert any("ran tuned schedules" in n for n in compiled.report.notes)
    np.testing.assert_allclose(
        compiled(x).detach().numpy(), net(x).detach().numpy(), rtol=1e-4, atol=1e-4
    )
    untuned = tvm_sparse.compile(net, "x86", example_inputs=(x,), tuning_cache=None)
    assert not any(r.kernel.endswith("(tuned)") for r in untuned.report.rows)


def test_corrupt_cache_does_not_break_compile(model, cache):
    net, x = model
    cache.path.parent.mkdir(parents=True)
    cache.path.write_text("\x00\x01 not a cache\n")
    with pytest.warns(UserWarning, match="not a tvm_sparse tuning cache"):
        compiled = tvm_sparse.compile(net, "x86", example_inputs=(x,), tuning_cache=cache.path)
    assert any("tuning cache skipped" in n for n in compiled.report.notes)
