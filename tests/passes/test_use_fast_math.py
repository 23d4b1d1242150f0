import numpy as np
import pytest
import torch
import tvm
from tvm import relax

import tvm_sparse
from tvm_sparse.passes import UseFastMath


def _unary(op, shape=(4, 64)):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(op(x))
        bb.emit_func_output(out)
    return bb.get()


OPS = {
    "gelu": (relax.op.nn.gelu, lambda t: torch.nn.functional.gelu(t)),
    "gelu_tanh": (relax.op.nn.gelu_tanh, lambda t: torch.nn.functional.gelu(t, approximate="tanh")),
    "sigmoid": (relax.op.sigmoid, torch.sigmoid),
    "silu": (relax.op.nn.silu, torch.nn.functional.silu),
    "exp": (relax.op.exp, torch.exp),
    "tanh": (relax.op.tanh, torch.tanh),
    "softmax": (lambda x: relax.op.nn.softmax(x, axis=-1), lambda t: torch.softmax(t, -1)),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_fast_math_replaces_the_op_and_matches_torch(name):
    op, reference = OPS[name]
    mod = UseFastMath()(_unary(op))
    calls = [
        b.value
        for block in mod["main"].body.blocks
        for b in block.bindings
        if isinstance(b.value, relax.Call)
    ]
    # the transcendental op is now a TIR function that calls no C library function
    assert [c.op.name for c in calls] == ["relax.call_tir"], mod.script()
    assert all(" T.exp(" not in f.script() and " T.erf(" not in f.script()
               for gv, f in mod.functions_items() if gv.name_hint != "main")  # fmt: skip
    x = np.random.default_rng(0).uniform(-6, 6, (4, 64)).astype("float32")
    target = tvm.target.Target("llvm")
    with target:
        mod = relax.transform.LegalizeOps()(mod)
    vm = relax.VirtualMachine(tvm.compile(mod, target), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(got, reference(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)


def test_other_ops_and_dtypes_are_left_alone():
    mod = _unary(relax.op.nn.relu)
    tvm.ir.assert_structural_equal(UseFastMath()(mod), mod)
    half = _unary(lambda x: relax.op.nn.gelu(relax.op.astype(x, "float16")))
    names = [b.value.op.name for block in UseFastMath()(half)["main"].body.blocks
             for b in block.bindings]  # fmt: skip
    assert "relax.nn.gelu" in names


class _Transformerish(torch.nn.Module):
    def forward(self, x):
        return torch.softmax(x, -1) * torch.nn.functional.gelu(x) + torch.sigmoid(x)


def test_compiled_model_with_fast_math_matches_torch():
    torch.manual_seed(0)
    model, x = _Transformerish().eval(), 4 * torch.randn(2, 16, 128)
    compiled = tvm_sparse.compile(model, "x86", example_inputs=(x,), sparsity="off")
    np.testing.assert_allclose(compiled(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-6)
