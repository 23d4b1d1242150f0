import numpy as np
import tvm
from tvm import relax

from tvm_sparse.passes import FoldConstantsOnHost


def _module(rng) -> tvm.IRModule:
    """Batch-norm folding and weight layout work on constants, beside one op on the input."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 6, 6, 4), "float32"))
    weight = relax.const(rng.standard_normal((8, 4, 3, 3)).astype("float32"))
    var = relax.const(rng.random(8).astype("float32") + 0.5)
    gamma = relax.const(rng.standard_normal(8).astype("float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            std = bb.emit(
                relax.op.sqrt(
                    relax.op.add(var, relax.prim_value(tvm.tirx.FloatImm("float32", 1e-5)))
                )
            )
            scale = bb.emit(relax.op.divide(gamma, std))
            scaled = bb.emit(relax.op.multiply(weight, relax.op.reshape(scale, (8, 1, 1, 1))))
            hwio = bb.emit(relax.op.permute_dims(scaled, [2, 3, 1, 0]))
            packed = bb.emit(
                relax.op.layout_transform(hwio, lambda h, w, i, o: (o // 4, h, w, i, o % 4))
            )
            inv = bb.emit(relax.op.rsqrt(var))
            ints = bb.emit(
                relax.op.divide(
                    relax.const(np.arange(1, 9, dtype="int32")), relax.const(np.full(8, 3, "int32"))
                )
            )
            y = bb.emit(
                relax.op.nn.conv2d(x, hwio, padding=1, data_layout="NHWC", kernel_layout="HWIO")
            )
            out = bb.emit_output(relax.Tuple([y, packed, inv, ints]))
        bb.emit_func_output(out)
    return bb.get()


def _constant_calls(mod: tvm.IRModule) -> list[str]:
    found = []

    def visit(e):
        if (
            isinstance(e, relax.Call)
            and isinstance(e.op, tvm.ir.Op)
            and e.args
            and all(isinstance(a, (tvm.ir.Constant, relax.ShapeExpr)) for a in e.args)
        ):
            found.append(e.op.name)

    relax.analysis.post_order_visit(mod["main"], visit)
    return found


def _run(mod: tvm.IRModule, x: np.ndarray) -> list[np.ndarray]:
    exe = tvm.compile(mod, "llvm")
    vm = relax.VirtualMachine(exe, tvm.cpu())
    return [t.numpy() for t in vm["main"](tvm.runtime.tensor(x))]


def test_folds_arithmetic_and_layout_on_constants_as_fold_constant_does():
    rng = np.random.default_rng(0)
    before = _module(rng)
    after = FoldConstantsOnHost()(before)
    # everything but the integer division (TVM's rounding rules) is a constant now
    assert _constant_calls(after) == ["relax.divide"]
    assert "R.nn.conv2d(x," in after["main"].script()  # the op on the input stays
    x = rng.standard_normal((1, 6, 6, 4)).astype("float32")
    reference = _run(relax.transform.FoldConstant()(before), x)
    for got, want in zip(_run(after, x), reference, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_leaves_functions_without_constants_unchanged():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.permute_dims(relax.op.add(x, x)))
        bb.emit_func_output(out)
    before = bb.get()
    tvm.ir.assert_structural_equal(FoldConstantsOnHost()(before), before)
