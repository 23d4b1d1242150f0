import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.s_tir.dlight import ScheduleRule

from tvm_sparse.schedules import ApplySchedules, schedule_rules
from tvm_sparse.schedules.apply_schedules import KERNEL_ATTR, PASSED_OVER_ATTR

TARGET = tvm.target.Target("llvm")


class _Raises(ScheduleRule):
    """A rule that claims every function and then fails, as dlight's GPU Matmul did on some
    fused epilogues."""

    def apply(self, func, target, tunable):
        raise AssertionError("There are some consumers of the cache-write stage\nnot inlined")


def _legalized() -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((64, 64), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.relu(relax.op.add(x, x)))
        bb.emit_func_output(out)
    mod = relax.transform.LegalizeOps()(bb.get())
    return relax.transform.FuseTIR()(relax.transform.FuseOps()(
        relax.transform.AnnotateTIROpPattern()(mod)))  # fmt: skip


def test_a_rule_that_raises_passes_the_function_to_the_next():
    rules = [_Raises(), *schedule_rules(TARGET)]
    with TARGET, pytest.warns(RuntimeWarning, match="_Raises raised AssertionError: not inlined"):
        mod = ApplySchedules(rules)(_legalized())
    (kernel,) = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert str(kernel.attrs[KERNEL_ATTR]) != "_Raises"
    assert "_Raises raised AssertionError" in str(kernel.attrs[PASSED_OVER_ATTR])
    exe = tvm.compile(mod, TARGET)
    x = np.random.default_rng(0).standard_normal((64, 64)).astype("float32")
    out = relax.VirtualMachine(exe, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(out, np.maximum(2 * x, 0), rtol=1e-6)
