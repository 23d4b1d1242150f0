"""FoldConstantsOnHost: evaluate arithmetic and layout ops on constants with NumPy.

Relax's ``FoldConstant`` evaluates a call on constants by building its PrimFunc with LLVM
and running it: one code generation per op and shape. A CNN's batch-norm folding and weight
transposes leave hundreds of such calls (each BN a multiply, a sqrt and adds; each weight a
permute), and their builds are a large part of a compile. This pass evaluates the common
ones (elementwise arithmetic, transposes, reshapes, casts, layout transforms) on the host
and leaves the rest to ``FoldConstant``.

.. code-block:: python

    # Before
    lv = R.permute_dims(metadata["relax.expr.Constant"][0], axes=[2, 3, 1, 0])
    lv1 = R.nn.conv2d(x, lv, data_layout="NHWC", kernel_layout="HWIO")
    # After
    lv = metadata["relax.expr.Constant"][1]  # the transposed weight
    lv1 = R.nn.conv2d(x, lv, data_layout="NHWC", kernel_layout="HWIO")

Pipeline: before each ``FoldConstant`` on high-level ops (``prepare_passes``, after
``ConvertToNHWC``'s layout conversion).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ._numpy_ops import BINARY, EXACT_UNARY

__all__ = ["FoldConstantsOnHost"]

_FLOAT_OPS: dict[str, Callable[..., np.ndarray]] = {**BINARY, **EXACT_UNARY}
#: Ops that keep the elements in row-major order and only change the shape.
_RESHAPES = ("relax.reshape", "relax.expand_dims", "relax.squeeze", "relax.flatten")


def _evaluate(call: relax.Call, args: list[np.ndarray], dtype: str) -> np.ndarray | None:
    """``call`` on ``args`` with NumPy, or ``None`` for an op this pass leaves alone."""
    name = call.op.name
    if name in _FLOAT_OPS:
        if not all(a.dtype == np.dtype(dtype) for a in args) or "float" not in dtype:
            return None  # integer division and mixed dtypes keep TVM's own rules
        return _FLOAT_OPS[name](*args)
    if name == "relax.permute_dims":
        axes = call.attrs.axes
        return np.transpose(args[0], None if axes is None else [int(a) for a in axes])
    if name in _RESHAPES:
        return args[0]  # reshaped to the binding's shape by the caller
    if name == "relax.astype":
        return args[0].astype(str(call.attrs.dtype))
    if name == "relax.layout_transform" and call.attrs.pad_value is None:
        return call.attrs.index_map.map_tensor(tvm.runtime.tensor(args[0])).numpy()
    return None


@mutator
class _HostFolder(PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.bound: dict[relax.Var, tvm.ir.Constant] = {}  # new vars bound to constants
        self.arrays: dict[relax.Var, np.ndarray] = {}  # ... and their values, once read

    def _array(self, expr: relax.Expr) -> np.ndarray | None:
        if isinstance(expr, relax.Var) and expr in self.bound and expr not in self.arrays:
            self.arrays[expr] = self._array(self.bound[expr])
        if isinstance(expr, tvm.ir.Constant):
            value = expr.value  # a tensor, or a Python number for a scalar (a PrimValue)
            if hasattr(value, "numpy"):
                return value.numpy()
            dtype = getattr(expr.ty, "dtype", None)
            return None if dtype is None else np.asarray(value, str(dtype))
        return self.arrays.get(expr) if isinstance(expr, relax.Var) else None

    def _fold(self, value: relax.Expr, ty) -> np.ndarray | None:
        if not (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)):
            return None
        if not isinstance(ty, relax.TensorType) or ty.shape is None:
            return None
        shape = getattr(ty.shape, "values", None)
        if shape is None or not all(isinstance(v, tvm.tirx.IntImm) for v in shape):
            return None
        operands = value.args[:1] if value.op.name in _RESHAPES else value.args  # + a shape
        args = [self._array(a) for a in operands]
        if not args or any(a is None for a in args):
            return None
        dtype = str(ty.dtype)
        with np.errstate(all="ignore"):  # a division by zero gives inf, as in TVM
            result = _evaluate(value, args, dtype)
        if result is None:
            return None
        shape = tuple(int(v) for v in shape)
        if result.size != int(np.prod(shape, dtype=np.int64)):
            return None
        return np.ascontiguousarray(result.reshape(shape).astype(dtype, copy=False))

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = self.visit_expr(binding.value)
        folded = self._fold(value, binding.var.ty)
        if folded is not None:
            value = relax.const(folded, str(binding.var.ty.dtype))
        if isinstance(binding.var, relax.DataflowVar):
            new_var = self.builder_.emit(value, name_hint=binding.var.name)
        else:
            new_var = self.builder_.emit_output(value, name_hint=binding.var.name)
        if folded is not None:
            self.arrays[new_var] = folded
        elif isinstance(value, tvm.ir.Constant):
            self.bound[new_var] = value
        self.set_var_remap(binding.var, new_var)


@tvm.transform.module_pass(opt_level=0, name="FoldConstantsOnHost")
class FoldConstantsOnHost:
    """Replace calls of arithmetic and layout ops on constants by their value, computed with
    NumPy; what it does not evaluate is left for ``relax.transform.FoldConstant``."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        folder = _HostFolder(mod)
        for gv, func in list(mod.functions_items()):
            if isinstance(func, relax.Function):
                folder.builder_.update_func(gv, folder.visit_expr(func))
        return folder.builder_.get()
