import numpy as np
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from tvm_sparse.passes.rewrite_constant_take import RewriteConstantTake


def test_take_of_a_constant_index_becomes_a_slice():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 17, 64), "float32")) -> R.Tensor((1, 64), "float32"):
            with R.dataflow():
                y = R.take(x, R.const(-17, "int64"), axis=1)
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 17, 64), "float32")) -> R.Tensor((1, 64), "float32"):
            with R.dataflow():
                s = R.strided_slice(x, [1], [0], [1])
                y = R.squeeze(s, [1])
                R.output(y)
            return y

    after = RewriteConstantTake()(Before)
    tvm.ir.assert_structural_equal(after, Expected)
    x = np.random.default_rng(0).standard_normal((1, 17, 64)).astype("float32")
    exe = tvm.compile(after, "llvm")
    out = relax.VirtualMachine(exe, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(out, x[:, 0])


def test_indices_that_are_not_one_constant_stay_a_take():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((5, 8), "float32"), i: R.Tensor((3,), "int64")) -> R.Tuple(
            R.Tensor((3, 8), "float32"), R.Tensor((2, 8), "float32")
        ):
            with R.dataflow():
                a = R.take(x, i, axis=0)
                b = R.take(x, R.const(np.array([1, 4], "int64")), axis=0)
                out = (a, b)
                R.output(out)
            return out

    tvm.ir.assert_structural_equal(RewriteConstantTake()(Before), Before)
