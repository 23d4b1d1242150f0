import numpy as np
import pytest
import torch
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

import tvm_sparse
from tvm_sparse.passes import ReorderReshapeAfterElementwise


def test_unary_op_moves_below_reshape():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((4, 8), "float32"), w: R.Tensor((8, 6), "float32")):
            with R.dataflow():
                lv1 = R.matmul(x, w)
                lv2 = R.reshape(lv1, R.shape([1, 4, 6]))
                lv3 = R.nn.gelu(lv2)
                R.output(lv3)
            return lv3

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((4, 8), "float32"), w: R.Tensor((8, 6), "float32")):
            with R.dataflow():
                lv1 = R.matmul(x, w)
                lv3_pre = R.nn.gelu(lv1)
                lv3 = R.reshape(lv3_pre, R.shape([1, 4, 6]))
                R.output(lv3)
            return lv3

    after = ReorderReshapeAfterElementwise()(Before)
    tvm.ir.assert_structural_equal(after, Expected)


def test_binary_op_reshapes_its_other_operand_or_keeps_a_bias():
    @I.ir_module
    class Before:
        @R.function
        def main(
            x: R.Tensor((4, 8), "float32"),
            w: R.Tensor((8, 6), "float32"),
            r: R.Tensor((1, 4, 6), "float32"),
            b: R.Tensor((6,), "float32"),
        ):
            with R.dataflow():
                lv1 = R.matmul(x, w)
                lv2 = R.reshape(lv1, R.shape([1, 4, 6]))
                lv3 = R.add(lv2, r)
                lv4 = R.multiply(b, lv3)
                R.output(lv4)
            return lv4

    @I.ir_module
    class Expected:
        @R.function
        def main(
            x: R.Tensor((4, 8), "float32"),
            w: R.Tensor((8, 6), "float32"),
            r: R.Tensor((1, 4, 6), "float32"),
            b: R.Tensor((6,), "float32"),
        ):
            with R.dataflow():
                lv1 = R.matmul(x, w)
                lv3_pre = R.add(lv1, R.reshape(r, R.shape([4, 6])))
                lv4_pre = R.multiply(b, lv3_pre)
                lv4 = R.reshape(lv4_pre, R.shape([1, 4, 6]))
                R.output(lv4)
            return lv4

    after = ReorderReshapeAfterElementwise()(Before)
    tvm.ir.assert_structural_equal(after, Expected)


def test_reshape_that_regroups_a_broadcast_operand_stays():
    # the bias spans the last axis of the reshaped shape (4) but not of the source (6 = 2x3
    # rows regrouped): broadcasting would differ, so nothing moves
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 12), "float32"), b: R.Tensor((4,), "float32")):
            with R.dataflow():
                lv1 = R.nn.relu(x)
                lv2 = R.reshape(lv1, R.shape([6, 4]))
                lv3 = R.add(lv2, b)
                R.output(lv3)
            return lv3

    after = ReorderReshapeAfterElementwise()(Before)
    tvm.ir.assert_structural_equal(after, Before)


def test_reshape_of_a_kernel_call_stays():
    # a call_tir (the sparse kernels) fuses with nothing, and its reshape carries the layer name
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 4, 8), "float32")):
            with R.dataflow():
                lv1 = R.call_tir(Before.copy, (x,), out_ty=R.Tensor((1, 4, 8), "float32"))
                lv2 = R.reshape(lv1, R.shape([4, 8]))
                lv3 = R.nn.relu(lv2)
                R.output(lv3)
            return lv3

        @T.prim_func(private=True, s_tir=True)
        def copy(a: T.Buffer((1, 4, 8), "float32"), b: T.Buffer((1, 4, 8), "float32")):
            for i, j, k in T.grid(1, 4, 8):
                with T.sblock("copy"):
                    vi, vj, vk = T.axis.remap("SSS", [i, j, k])
                    b[vi, vj, vk] = a[vi, vj, vk]

    after = ReorderReshapeAfterElementwise()(Before)
    tvm.ir.assert_structural_equal(after, Before)


class _Linear3D(torch.nn.Module):
    """A linear on a 3-D activation: torch.export flattens it around the matmul."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(32, 64)

    def forward(self, x):
        return torch.nn.functional.gelu(self.fc(x)) + 1.0


def test_gelu_after_3d_linear_fuses_into_the_matmul_and_matches_torch():
    torch.manual_seed(0)
    model, x = _Linear3D().eval(), torch.randn(2, 8, 32)
    compiled = tvm_sparse.compile(model, "x86", example_inputs=(x,), sparsity="off")
    gelu = [r for r in compiled.report.rows if r.op.endswith("nn.gelu")]
    assert gelu and "matmul" in gelu[0].fused_into, compiled.report
    with torch.no_grad():
        np.testing.assert_allclose(compiled(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 16, 8), (3, 8)])
def test_module_is_unchanged_without_reshapes(shape):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.relu(x))
        bb.emit_func_output(out)
    mod = bb.get()
    tvm.ir.assert_structural_equal(ReorderReshapeAfterElementwise()(mod), mod)
