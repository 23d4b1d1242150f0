"""ReorderReshapeAfterElementwise: move reshapes below elementwise ops so epilogues fuse."""

from __future__ import annotations

import tvm
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

__all__ = ["ReorderReshapeAfterElementwise"]

#: Ops applied to each element alone (extra arguments, if any, are not tensors).
_UNARY = {
    "relax.abs",
    "relax.astype",
    "relax.clip",
    "relax.erf",
    "relax.exp",
    "relax.negative",
    "relax.nn.gelu",
    "relax.nn.gelu_tanh",
    "relax.nn.leakyrelu",
    "relax.nn.relu",
    "relax.nn.silu",
    "relax.rsqrt",
    "relax.sigmoid",
    "relax.sqrt",
    "relax.square",
    "relax.tanh",
}
#: Elementwise ops of two tensors with broadcasting.
_BINARY = {
    "relax.add",
    "relax.divide",
    "relax.maximum",
    "relax.minimum",
    "relax.multiply",
    "relax.power",
    "relax.subtract",
}


def _static_shape(expr: relax.Expr) -> tuple[int, ...] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    dims = ty.shape.values
    if not all(isinstance(d, tirx.IntImm) for d in dims):
        return None
    return tuple(int(d) for d in dims)


def _broadcast_operand(other: relax.Expr, reshaped: tuple, source: tuple) -> relax.Expr | None:
    """``other`` rewritten to combine with the reshape's input as it combined with its output.

    Works when ``other`` has the reshape's output shape (it is reshaped back), or when its
    non-unit trailing dimensions are trailing dimensions of both shapes (a bias, a scalar),
    so that it broadcasts over the same elements either way.
    """
    shape = _static_shape(other)
    if shape is None:
        return None
    if shape == reshaped:
        return _reshape(other, source)
    core = list(shape)
    while core and core[0] == 1:
        core.pop(0)
    r = len(core)
    if r > len(source) or (r and (reshaped[-r:] != tuple(core) or source[-r:] != reshaped[-r:])):
        return None
    return other if len(shape) <= len(source) else _reshape(other, core)


def _reshape(expr: relax.Expr, shape) -> relax.Expr:
    """``expr`` reshaped; a constant (a bias) is reshaped here rather than by a new op."""
    if isinstance(expr, tvm.ir.Constant) and isinstance(expr.ty, relax.TensorType):
        data = expr.value.numpy()
        return relax.const(data.reshape(shape), str(data.dtype))
    return relax.op.reshape(expr, shape)


@mutator
class _Reorderer(PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.changed = False

    def _reshaped(self, expr: relax.Expr) -> relax.Expr | None:
        """What ``expr`` reshapes, when it is a var bound to ``reshape(a, ...)``."""
        value = self.lookup_binding(expr) if isinstance(expr, relax.Var) else None
        is_reshape = isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.reshape")
        return value.args[0] if is_reshape else None

    def _reshape_input(self, expr: relax.Expr) -> tuple[relax.Expr, tuple] | None:
        """``(a, shape of a)`` when ``expr`` reshapes ``a``, an op's result of static shape."""
        source = self._reshaped(expr)
        shape = _static_shape(source) if source is not None else None
        if shape is None or not self._fusable_producer(source):
            return None
        return source, shape

    def _unreshaped(self, expr: relax.Expr, shape: tuple) -> relax.Expr | None:
        """What ``expr`` reshapes, when that already has ``shape`` (a residual whose own
        reshape was moved down: no reshape back and forth)."""
        source = self._reshaped(expr)
        return source if source is not None and _static_shape(source) == shape else None

    def _fusable_producer(self, expr: relax.Expr) -> bool:
        """Whether ``expr`` is computed by a Relax operator, which the elementwise op can fuse
        into; a ``call_tir`` (a hand-written kernel such as the sparse ones) fuses with
        nothing, and its reshape keeps the layer's name for the report."""
        if not isinstance(expr, relax.Var):
            return False
        value = self.lookup_binding(expr)
        return (
            isinstance(value, relax.Call)
            and isinstance(value.op, tvm.ir.Op)
            and value.op.name not in ("relax.call_tir", "relax.call_dps_packed")
        )

    def _reordered(self, call: relax.Call) -> relax.Call | None:
        """``op(a, ...)`` in the reshape's input shape, or ``None`` when it cannot move."""
        name = call.op.name if isinstance(call.op, tvm.ir.Op) else ""
        reshaped = _static_shape(call)
        if reshaped is None:
            return None
        if name in _UNARY:
            found = self._reshape_input(call.args[0])
            if found is None:
                return None
            return relax.Call(call.op, [found[0], *call.args[1:]], call.attrs)
        if name in _BINARY:
            for pos in (0, 1):
                found = self._reshape_input(call.args[pos])
                if found is None or _static_shape(call.args[pos]) != reshaped:
                    continue
                source, shape = found
                other = self._unreshaped(call.args[1 - pos], shape)
                if other is None:
                    other = _broadcast_operand(call.args[1 - pos], reshaped, shape)
                if other is None:
                    continue
                args = [source, other] if pos == 0 else [other, source]
                return relax.Call(call.op, args, call.attrs)
        return None

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = self.visit_expr(binding.value)
        moved = self._reordered(value) if isinstance(value, relax.Call) else None
        if moved is None:
            self.builder_.emit_normalized(relax.VarBinding(binding.var, value))
            return
        self.changed = True
        args = [
            self.builder_.emit(arg, name_hint=f"{binding.var.name}_operand")
            if isinstance(arg, relax.Call)
            else arg
            for arg in moved.args
        ]
        moved = relax.Call(moved.op, args, moved.attrs)
        # the op runs under a derived name; the binding's own name (which the report and the
        # per-layer decisions key on) stays on the value its users see
        inner = self.builder_.emit(moved, name_hint=f"{binding.var.name}_pre")
        var_cls = relax.DataflowVar if isinstance(binding.var, relax.DataflowVar) else relax.Var
        new = var_cls(binding.var.name, binding.var.ty)
        reshape = relax.op.reshape(inner, _static_shape(binding.var))
        self.builder_.emit_normalized(relax.VarBinding(new, self.builder_.normalize(reshape)))
        self.set_var_remap(binding.var, new)


@tvm.transform.module_pass(opt_level=0, name="ReorderReshapeAfterElementwise")
class ReorderReshapeAfterElementwise:
    """Apply elementwise ops before a reshape instead of after it.

    ``FuseOps`` fuses elementwise ops into the matmul or conv that produces their input, but
    not across a reshape, and importers put reshapes between them: ``torch.export`` computes a
    linear on ``(1, 128, 768)`` as a reshape to ``(128, 768)``, a matmul and a reshape back, so
    a GELU or residual add on the 3-D result became a kernel of its own, reading and writing
    the whole activation again. Moving the reshape below the elementwise op lets it join the
    matmul's epilogue; the reshape itself costs nothing (``RewriteDataflowReshape`` makes it a
    view). Only reshapes of a Relax operator's result move (a ``call_tir`` kernel fuses with
    nothing). Unary ops always move; a binary op moves when its other operand has the reshaped
    shape (it is reshaped back) or broadcasts over trailing dimensions the reshape keeps
    (a bias, a scalar).

    Before::

        lv1 = R.matmul(x, w)                           # (128, 3072)
        lv2 = R.reshape(lv1, R.shape([1, 128, 3072]))
        lv3 = R.nn.gelu(lv2)

    After::

        lv1 = R.matmul(x, w)
        lv2 = R.reshape(lv1, R.shape([1, 128, 3072]))
        lv3_pre = R.nn.gelu(lv1)                       # fuses into the matmul
        lv3 = R.reshape(lv3_pre, R.shape([1, 128, 3072]))

    The binding keeps its name on the reshaped result, so names that the report and per-layer
    sparsity choices use still denote the same values. Pipeline: after the sparsity passes,
    before ``LegalizeOps``; follow it with ``DeadCodeElimination``.
    """

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updates = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, relax.Function) or (func.attrs and func.attrs.get("Primitive")):
                continue
            reorderer = _Reorderer(mod)
            new_func = reorderer.visit_expr(func)
            if reorderer.changed:
                updates[gvar] = new_func
        if not updates:
            return mod
        mod = mod.clone()
        for gvar, func in updates.items():
            mod[gvar] = func
        return relax.transform.DeadCodeElimination()(mod)
