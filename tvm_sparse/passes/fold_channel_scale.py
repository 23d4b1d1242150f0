"""FoldChannelScale: fold a constant scale per output channel into the matmul before it.

A layer scale (ConvNeXt's and CaiT's ``gamma``) multiplies a linear layer's output by one
constant per output channel. A dense matmul computes the multiply in its own loop; a sparse
kernel applies a bias and an activation in its stores but not this, which then runs as a pass
of its own over the output. Folded into the weight's columns and the bias, it costs neither.

.. code-block:: python

    # Before
    lv = R.matmul(x, metadata["relax.expr.Constant"][0])  # (k, n)
    lv1 = R.add(lv, metadata["relax.expr.Constant"][1])  # (n,), where there is a bias
    lv2 = R.reshape(lv1, R.shape([2, 16, n]))  # none or more, the channels kept last
    lv3 = R.multiply(lv2, metadata["relax.expr.Constant"][2])  # (n,): one per channel
    # After
    lv = R.matmul(x, metadata["relax.expr.Constant"][3])  # the weight's columns scaled
    lv1 = R.add(lv, metadata["relax.expr.Constant"][4])  # the bias scaled
    lv3 = R.reshape(lv1, R.shape([2, 16, n]))

The matmul, the add and the reshapes must have no other users, and the multiply must keep the
shape. Pipeline: after ``FoldConstant`` in
``prepare_passes``, before ``DetectSparsity`` reads the weights (a scale keeps their zeros).
"""

from __future__ import annotations

import numpy as np
import tvm
import tvm_ffi
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ._bindings import function_bindings, only_users, op_name, with_functions

__all__ = ["FoldChannelScale"]


def _channels(expr: relax.Expr) -> int | None:
    """The last dim of a tensor of static shape, or ``None``."""
    shape = getattr(expr.ty, "shape", None)
    if shape is None or not shape.values:
        return None
    last = shape.values[-1]
    return int(last) if isinstance(last, tvm.tirx.IntImm) else None


def _per_channel(arg: relax.Expr, channels: int) -> np.ndarray | None:
    """``arg`` as ``(channels,)`` where it is a float32 constant of one value per channel."""
    if not isinstance(arg, tvm.ir.Constant):
        return None
    value = arg.value.numpy()
    if value.dtype != np.float32 or value.size != channels or value.shape[-1:] != (channels,):
        return None
    return value.reshape(channels)


def _same_type(a: relax.Var, b: relax.Var) -> bool:
    return tvm_ffi.structural_equal(a.ty, b.ty)


def _sites(func: relax.Function) -> dict[relax.Var, tuple]:
    """Each multiply to fold: ``{multiply var: (matmul var, add var or None, the var the
    multiply reads, scale)}``."""
    values = dict(function_bindings(func))
    users = only_users(func)
    sites = {}
    for var, value in values.items():
        if op_name(value) != "relax.matmul" or not isinstance(value.args[1], tvm.ir.Constant):
            continue
        channels = _channels(var)
        if channels is None or value.args[1].value.numpy().ndim != 2:
            continue
        add, last = None, var
        user = users.get(var)
        if user is not None and op_name(values[user]) == "relax.add":
            bias = [_per_channel(a, channels) for a in values[user].args if not a.same_as(var)]
            if len(bias) == 1 and bias[0] is not None:
                add, last, user = user, user, users.get(user)
        # the importer's reshapes back to the input's leading dims keep the channels last
        while user is not None and op_name(values[user]) == "relax.reshape":
            if _channels(user) != channels:
                break
            last, user = user, users.get(user)
        if user is None or op_name(values[user]) != "relax.multiply":
            continue
        scale = [_per_channel(a, channels) for a in values[user].args if not a.same_as(last)]
        # the multiply's users read the add instead: both inside the dataflow block
        inside = isinstance(user, relax.DataflowVar)
        if len(scale) == 1 and scale[0] is not None and inside and _same_type(user, last):
            sites[user] = (var, add, last, scale[0])
    return sites


@mutator
class _Folder(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, sites: dict[relax.Var, tuple]) -> None:
        super().__init__(mod)
        self.scaled = {}  # matmul or add var -> the scale its constant takes
        self.dropped = {}  # multiply var -> the var it becomes
        for mul, (matmul, add, last, scale) in sites.items():
            self.scaled[matmul] = scale
            if add is not None:
                self.scaled[add] = scale
            self.dropped[mul] = last

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        var, value = binding.var, binding.value
        if var in self.dropped:
            self.set_var_remap(var, self.get_var_remap(self.dropped[var]))
            return
        if var in self.scaled:
            scale = self.scaled[var]
            args = [self.visit_expr(a) for a in value.args]
            # the matmul's weight (its second argument), or the add's bias
            scaled = [1] if op_name(value) == "relax.matmul" else range(len(args))
            for i in scaled:
                if isinstance(value.args[i], tvm.ir.Constant):
                    args[i] = relax.const(value.args[i].value.numpy() * scale)
            new = self.builder_.normalize(relax.Call(value.op, args, value.attrs))
            self.set_var_remap(var, self.builder_.emit(new, name_hint=var.name))
            return
        super().visit_var_binding_(binding)


@tvm.transform.module_pass(opt_level=0, name="FoldChannelScale")
class FoldChannelScale:
    """Fold a constant per-output-channel multiply after a matmul (and its bias add) into the
    matmul's weight and bias."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updates = {}
        for gv, func in mod.functions.items():
            if not isinstance(func, relax.Function):
                continue
            sites = _sites(func)
            if sites:
                folder = _Folder(mod, sites)
                updates[gv] = folder.visit_expr(func)
        return with_functions(mod, updates)
