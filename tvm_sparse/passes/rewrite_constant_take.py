"""RewriteConstantTake: a ``take`` of one constant index becomes a slice."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

__all__ = ["RewriteConstantTake"]


@tvm.transform.module_pass(opt_level=0, name="RewriteConstantTake")
class RewriteConstantTake:
    """Replace ``take`` of a constant scalar index with ``strided_slice`` and ``squeeze``.

    ``torch.export`` writes ``x[:, 0]`` (ViT's class token) as ``take`` with an ``int64``
    constant, and its legalized kernel reads the index from memory, so its address stays
    ``int64`` arithmetic: on CUDA TVM's NVPTX backend then emits IR that fails LLVM
    verification (an ``i32`` thread index against ``i64`` bounds), and everywhere the kernel
    loads an index it could have known. A slice holds the index in the kernel itself.

    Before::

        lv1 = R.take(lv, R.const(0, "int64"), axis=1)      # (1, 17, 64) -> (1, 64)

    After::

        lv1 = R.squeeze(R.strided_slice(lv, [1], [0], [1]), [1])

    Pipeline: with the other preparing passes, before ``LegalizeOps``; the slice fuses with
    what reads it. A negative index counts from the end of a static axis; an index out of
    range, or on a dynamic axis, is left to ``take``.
    """

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        pattern = is_op("relax.take")(wildcard(), is_const())

        def rewrite(call: relax.Call, _matches: dict) -> relax.Expr:
            data_expr, index_expr = call.args[0], call.args[1]
            if not isinstance(index_expr, tvm.ir.Constant):
                return call
            value = index_expr.value.numpy()
            shape = getattr(data_expr.ty, "shape", None)
            shape = getattr(shape, "values", None)
            axis = call.attrs.axis
            if value.ndim != 0 or axis is None or shape is None:
                return call
            axis = int(axis) % len(shape)
            extent = shape[axis]
            if not isinstance(extent, tvm.tirx.IntImm):
                return call
            i = int(value) + (int(extent) if int(value) < 0 else 0)
            if not 0 <= i < int(extent):
                return call
            sliced = relax.op.strided_slice(data_expr, [axis], [i], [i + 1])
            return relax.op.squeeze(sliced, [axis])

        updates = {}
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                updates[gvar] = rewrite_call(pattern, rewrite, func)
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod
