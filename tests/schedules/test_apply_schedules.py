from types import SimpleNamespace

import numpy as np
import pytest
import tvm
import zoo
from cuda_testing import run_on_cpu
from tvm import relax, s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight import ScheduleRule
from tvm.s_tir.dlight.analysis import get_root_block

import tvm_sparse
from tvm_sparse.schedules import ApplySchedules, ScheduleError, schedule_problem, schedule_rules
from tvm_sparse.schedules.apply_schedules import KERNEL_ATTR, PASSED_OVER_ATTR, UNSCHEDULED
from tvm_sparse.schedules.cpu.base import CPUScheduleRule

TARGET = tvm.target.Target("llvm")
CUDA = tvm.target.Target("nvidia/jetson-orin-nano")


class _Raises(ScheduleRule):
    """A rule that claims every function and then fails, as dlight's GPU Matmul did on some
    fused epilogues."""

    def apply(self, func, target, tunable):
        raise AssertionError("There are some consumers of the cache-write stage\nnot inlined")


class _TooManyThreads(ScheduleRule):
    """dlight's GPU ``Fallback`` told the GPU has 2048 threads per block, as a rule written for
    another GPU might be: it schedules, but cannot launch on a Jetson (nor run on a CPU)."""

    def apply(self, func, target, tunable):
        bigger = tvm.target.Target({**CUDA.export(), "max_threads_per_block": 2048})
        return dl.gpu.Fallback().apply(func, bigger, tunable)


class _Unbound(ScheduleRule):
    """A GPU rule that claims a function and binds nothing: its loops would run on the host."""

    def apply(self, func, target, tunable):
        return s_tir.Schedule(func)


class _IllFormed(ScheduleRule):
    """A rule whose function reads a variable it never defines (a ``Schedule`` would refuse
    it, so the rule hands back the module as a hand-written rule could)."""

    def apply(self, func, target, tunable):
        body = tirx.Evaluate(tirx.Var("undefined_n", "int32") + 1)
        return SimpleNamespace(mod=tvm.IRModule({"main": func.with_body(body)}))


def _legalized(shape=(64, 64)) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.relu(relax.op.add(x, x)))
        bb.emit_func_output(out)
    mod = relax.transform.LegalizeOps()(bb.get())
    return relax.transform.FuseTIR()(relax.transform.FuseOps()(
        relax.transform.AnnotateTIROpPattern()(mod)))  # fmt: skip


def _kernel(mod: tvm.IRModule) -> tirx.PrimFunc:
    (kernel,) = [f for f in mod.functions.values() if isinstance(f, tirx.PrimFunc)]
    return kernel


def _run_cpu(mod: tvm.IRModule, x: np.ndarray) -> np.ndarray:
    exe = tvm.compile(mod, TARGET)
    return relax.VirtualMachine(exe, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def test_a_rule_that_raises_passes_the_function_to_the_next():
    rules = [_Raises(), *schedule_rules(TARGET)]
    with TARGET, pytest.warns(RuntimeWarning, match="_Raises raised AssertionError: not inlined"):
        mod = ApplySchedules(rules)(_legalized())
    kernel = _kernel(mod)
    assert str(kernel.attrs[KERNEL_ATTR]) != "_Raises"
    assert "_Raises raised AssertionError" in str(kernel.attrs[PASSED_OVER_ATTR])
    x = np.random.default_rng(0).standard_normal((64, 64)).astype("float32")
    np.testing.assert_allclose(_run_cpu(mod, x), np.maximum(2 * x, 0), rtol=1e-6)


@pytest.mark.parametrize(
    "broken, why",
    [
        (_IllFormed(), "not well formed: ValueError: Invalid use of undefined variable"),
        (_TooManyThreads(), "loops bound to GPU threads (blockIdx.x, threadIdx.x) on a CPU"),
    ],
)
def test_a_cpu_rule_with_an_invalid_schedule_passes_the_function_on(broken, why):
    rules = [broken, *schedule_rules(TARGET)]
    with TARGET, pytest.warns(RuntimeWarning, match="produced an invalid schedule"):
        mod = ApplySchedules(rules)(_legalized())
    kernel = _kernel(mod)
    rule = str(kernel.attrs[KERNEL_ATTR])
    note = str(kernel.attrs[PASSED_OVER_ATTR])
    assert rule in {type(r).__name__ for r in schedule_rules(TARGET)}
    assert note.startswith(f"{type(broken).__name__} produced an invalid schedule: {why}")
    assert note.endswith(f"scheduled by {rule}")
    x = np.random.default_rng(1).standard_normal((64, 64)).astype("float32")
    np.testing.assert_allclose(_run_cpu(mod, x), np.maximum(2 * x, 0), rtol=1e-6)


class _RefusedPrimitive(CPUScheduleRule):
    """One of the project's CPU rules whose schedule fails part-way (a primitive refuses)."""

    def schedule(self, sch, target, knobs):
        (block,) = sch.get_child_blocks(get_root_block(sch))[-1:]
        sch.compute_inline(block)  # the output block: refused
        return sch


def test_a_cpu_rule_that_fails_part_way_is_reported_not_silent():
    rules = [_RefusedPrimitive(), *schedule_rules(TARGET)]
    with TARGET, pytest.warns(RuntimeWarning, match="_RefusedPrimitive raised ScheduleError"):
        mod = ApplySchedules(rules)(_legalized())
    kernel = _kernel(mod)
    rule = str(kernel.attrs[KERNEL_ATTR])
    assert rule in {type(r).__name__ for r in schedule_rules(TARGET)}
    assert str(kernel.attrs[PASSED_OVER_ATTR]).endswith(f"scheduled by {rule}")
    x = np.random.default_rng(3).standard_normal((64, 64)).astype("float32")
    np.testing.assert_allclose(_run_cpu(mod, x), np.maximum(2 * x, 0), rtol=1e-6)


def test_cpu_functions_no_rule_schedules_validly_stay_plain_loops():
    with TARGET, pytest.warns(RuntimeWarning, match="left unscheduled"):
        mod = ApplySchedules([_Raises(), _IllFormed()])(_legalized())
    kernel = _kernel(mod)
    assert str(kernel.attrs[KERNEL_ATTR]) == UNSCHEDULED
    assert "_Raises raised" in str(kernel.attrs[PASSED_OVER_ATTR])
    assert "_IllFormed produced an invalid schedule" in str(kernel.attrs[PASSED_OVER_ATTR])
    x = np.random.default_rng(2).standard_normal((64, 64)).astype("float32")
    np.testing.assert_allclose(_run_cpu(mod, x), np.maximum(2 * x, 0), rtol=1e-6)


def test_gpu_limits_and_unbound_loops_are_invalid_schedules():
    func = _kernel(_legalized((64, 64)))
    with CUDA:
        too_many = _TooManyThreads().apply(func, CUDA, False).mod["main"]
        fine = dl.gpu.Fallback().apply(func, CUDA, False).mod["main"]
        problems = {
            "unbound": schedule_problem(func, CUDA),
            "too many": schedule_problem(too_many, CUDA),
            "fallback": schedule_problem(fine, CUDA),
        }
    assert problems["unbound"].startswith("blocks not bound to GPU threads")
    assert "2048 threads per block" in problems["too many"]
    assert "max_threads_per_block 1024" in problems["too many"]
    assert problems["fallback"] is None


def _shared_hog(func: tirx.PrimFunc) -> s_tir.Schedule:
    """A matmul that stages the whole (256, 128) weight in shared memory: 128 KiB per block."""
    sch = s_tir.Schedule(func)
    block = sch.get_sblock("matmul")
    i, j, _ = sch.get_loops(block)
    sch.bind(i, "blockIdx.x")
    sch.bind(j, "threadIdx.x")
    sch.compute_at(sch.cache_read(block, 1, "shared"), i)
    return sch


def test_shared_memory_over_the_limit_is_an_invalid_schedule():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((64, 256), "float32"))
    w = relax.Var("w", relax.TensorType((256, 128), "float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(x, w))
        bb.emit_func_output(out)
    func = _kernel(relax.transform.LegalizeOps()(bb.get()))
    with CUDA:
        problem = schedule_problem(_shared_hog(func).mod["main"], CUDA)
    assert "shared buffers of 131072 bytes" in problem
    assert "max_shared_memory_per_block 49152" in problem


def test_gpu_functions_fall_back_to_dlights_fallback_when_every_rule_fails():
    rules = [_Raises(), _TooManyThreads(), _Unbound(), _IllFormed()]
    with CUDA, pytest.warns(RuntimeWarning, match="scheduled by Fallback \\(last resort\\)"):
        mod = ApplySchedules(rules)(_legalized((32, 48)))
    kernel = _kernel(mod)
    assert str(kernel.attrs[KERNEL_ATTR]) == "Fallback"
    note = str(kernel.attrs[PASSED_OVER_ATTR])
    for rule, why in [
        ("_Raises", "raised AssertionError"),
        ("_TooManyThreads", "produced an invalid schedule: exceeds the target's limits"),
        ("_Unbound", "produced an invalid schedule: blocks not bound to GPU threads"),
        ("_IllFormed", "produced an invalid schedule: not well formed"),
    ]:
        assert f"{rule} {why}" in note, note
    # the last resort computes the function: its thread loops run serially here
    x = np.random.default_rng(3).standard_normal((32, 48)).astype("float32")
    out = run_on_cpu(kernel.without_attr("tirx.is_scheduled"), x, np.zeros_like(x))
    np.testing.assert_allclose(out, np.maximum(2 * x, 0), rtol=1e-6)


def test_a_gpu_function_nothing_can_schedule_is_a_clear_error():
    ill_formed = _kernel(_legalized()).with_body(tirx.Evaluate(tirx.Var("undefined_n", "int32")))
    with CUDA, pytest.raises(ScheduleError, match="no schedule rule produced a valid schedule"):
        ApplySchedules(schedule_rules(CUDA))._schedule(ill_formed, CUDA)  # noqa: SLF001


def test_the_compile_report_names_the_rule_that_ran_and_why_others_were_skipped(monkeypatch):
    import tvm_sparse.schedules as schedules

    default = schedules._RULES["cuda"]  # noqa: SLF001
    broken = [_Raises(), _TooManyThreads()]
    monkeypatch.setitem(schedules._RULES, "cuda", lambda t: [*broken, *default(t)])  # noqa: SLF001
    model, (x,) = zoo.make("mlp")
    with pytest.warns(RuntimeWarning, match="produced an invalid schedule"):
        compiled = tvm_sparse.compile(model, "jetson-orin-nano", example_inputs=(x,))
    notes = [n for n in compiled.report.notes if "_TooManyThreads" in n]
    assert notes, compiled.report
    for note in notes:
        assert "_Raises raised AssertionError" in note
        assert "_TooManyThreads produced an invalid schedule: exceeds the target's limits" in note
        assert "scheduled by" in note
    rules = {r.kernel.split(" ")[0] for r in compiled.report.rows if r.flops}
    assert not rules & {"_Raises", "_TooManyThreads", UNSCHEDULED}
