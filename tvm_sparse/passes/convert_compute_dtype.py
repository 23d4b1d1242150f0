"""ConvertComputeDtype: run a model's compute in fp16 or bf16, accumulating in fp32.

TVM's ``ToMixedPrecision`` does the conversion: matmuls and convs take fp16 operands and
accumulate in fp32 (``out_dtype="float32"``, then a cast to fp16), elementwise ops follow their
inputs, and ops it holds unsafe in fp16 (softmax, sums and means, and every ``call_tir``,
among them the project's fp32 sparse kernels) stay fp32 with casts around them. The
function's parameters and results keep their dtypes, so ``compiled(x_fp32)`` returns fp32.

Before::

    lv2 = R.matmul(lv, metadata["ir.GenericConst"][0])          # fp32
    lv3 = R.add(lv2, metadata["ir.GenericConst"][1])

After (``dtype="float16"``)::

    lv_f16 = R.astype(lv, "float16")
    const_f16 = R.astype(metadata["ir.GenericConst"][0], "float16")  # folded later
    lv2 = R.matmul(lv_f16, const_f16, out_dtype="float32")
    lv2_f16 = R.astype(lv2, "float16")
    const_f16_1 = R.astype(metadata["ir.GenericConst"][1], "float16")
    lv3 = R.add(lv2_f16, const_f16_1)                               # fp16

The pass works around two things of TVM 0.27's ``ToMixedPrecision``: it fails on a call with
a ``PrimValue`` argument (``R.clip``, as ReLU6 imports), so a clip becomes the maximum and
minimum it computes; and it renames bindings, so each op keeps its original name (the compile
report and ``"tvm_sparse.decisions"`` key on it) and the casts it adds are named after what
they cast. bf16: ``ToMixedPrecision`` only writes fp16, so its casts are made bf16 casts
before any constant is folded (each cast then rounds the fp32 value once, never through fp16).

Pipeline: after the sparsity passes, which read fp32 weights and emit fp32 kernels, and the
report's op rows; before ``FoldConstantsOnHost`` (which folds the weight casts) and
``LegalizeOps`` (``ToMixedPrecision`` rewrites Relax ops, not TIR).
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ._bindings import op_name

__all__ = ["ConvertComputeDtype"]

_LOW = ("float16", "bfloat16")
_CLIP = "relax.clip"
_CALL_TIR = "relax.call_tir"
#: The name suffix of the casts ``_Prepare`` puts before a ``call_tir``.
_KEPT = "kept"


def _emit(builder: relax.BlockBuilder, var: relax.Var, value: relax.Expr, name: str) -> relax.Var:
    """Bind ``value`` as ``name``, a dataflow block's output where ``var`` was one."""
    is_output = builder.current_block_is_dataflow() and not isinstance(var, relax.DataflowVar)
    return (builder.emit_output if is_output else builder.emit)(value, name_hint=name)


@mutator
class _Prepare(PyExprMutator):
    """What ``ToMixedPrecision`` cannot take, in a form it can.

    ``clip(x, lo, hi)`` becomes ``minimum(maximum(x, lo), hi)``, keeping the clip's name. Each
    activation argument of a ``call_tir`` goes through a cast to its own dtype (dropped again
    after the conversion where it stays one): where the conversion makes that argument fp16,
    0.27's pass would insert the cast back to fp32 on every argument of the ``call_tir``,
    the kernel's ``GlobalVar`` included, and fail; given a cast, it changes the cast instead.
    """

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = binding.value
        if op_name(value) == _CALL_TIR:
            super().visit_var_binding_(self._cast_arguments(binding))
            return
        if op_name(value) != _CLIP or not isinstance(value.args[0].ty, relax.TensorType):
            super().visit_var_binding_(binding)
            return
        x = self.visit_expr(value.args[0])
        dtype = str(x.ty.dtype)
        lo, hi = (relax.const(float(getattr(a.value, "value", a.value)), dtype)
                  for a in value.args[1:])  # fmt: skip
        low = self.builder_.emit(relax.op.maximum(x, lo), name_hint=f"{binding.var.name}_lo")
        new = _emit(self.builder_, binding.var, relax.op.minimum(low, hi), binding.var.name)
        self.set_var_remap(binding.var, new)

    def _cast_arguments(self, binding: relax.VarBinding) -> relax.VarBinding:
        call = binding.value
        args = []
        for arg in call.args[1].fields:
            if isinstance(arg, relax.Var) and isinstance(arg.ty, relax.TensorType):
                cast = relax.op.astype(self.visit_expr(arg), str(arg.ty.dtype))
                arg = self.builder_.emit(cast, name_hint=f"{arg.name}_{_KEPT}")
            args.append(arg)
        new = relax.Call(call.op, [call.args[0], tvm.ir.Tuple(args), *call.args[2:]],
                         call.attrs, call.ty_args)  # fmt: skip
        return relax.VarBinding(binding.var, new)


#: Suffixes of the casts' names, by the dtype they cast to.
_SUFFIX = {"float16": "f16", "bfloat16": "bf16", "float32": "f32"}


@mutator
class _Restore(PyExprMutator):
    """Give ``ToMixedPrecision``'s output the original names; make its fp16 casts ``dtype``.

    ``originals`` lists the ``(name, op, shape)`` of the bindings before the conversion, in
    program order; the converted bindings are matched to them in order by op and shape (the
    conversion only adds casts). A binding that matches none, a cast, is named after what it
    casts and to what: ``lv3_f16``, ``x_f16``, ``const_f16``.
    """

    def __init__(self, mod, originals, dtype: str, taken: set[str]):
        super().__init__(mod)
        self.originals = originals
        self.dtype = dtype
        self.taken = taken
        self.next = 0

    def _fresh(self, name: str) -> str:
        k, fresh = 0, name
        while fresh in self.taken:
            k += 1
            fresh = f"{name}_{k}"
        self.taken.add(fresh)
        return fresh

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = self.visit_expr(binding.value)
        is_cast = op_name(value) == "relax.astype"
        key = (op_name(binding.value), _shape(binding.var.ty))
        matched = self.next < len(self.originals) and self.originals[self.next][1:] == key
        if is_cast and isinstance(binding.var, relax.DataflowVar) and _same_dtype(value):
            self.next += matched  # a _Prepare cast the conversion left as it was: dropped
            self.set_var_remap(binding.var, value.args[0])
            return
        if is_cast and self.dtype != "float16" and str(value.attrs.dtype) == "float16":
            value = relax.op.astype(value.args[0], self.dtype)
        if matched:
            name = self.originals[self.next][0]
            self.next += 1
        elif is_cast:
            source = value.args[0]
            base = source.name if isinstance(source, relax.Var) else "const"
            name = self._fresh(f"{base}_{_SUFFIX.get(str(value.attrs.dtype), 'cast')}")
        else:
            name = self._fresh(binding.var.name)
        self.set_var_remap(binding.var, _emit(self.builder_, binding.var, value, name))


def _same_dtype(cast: relax.Call) -> bool:
    source = cast.args[0].ty
    return isinstance(source, relax.TensorType) and str(source.dtype) == str(cast.attrs.dtype)


def _shape(ty: relax.Type) -> tuple | None:
    if isinstance(ty, relax.TensorType) and ty.shape is not None:
        return tuple(str(d) for d in ty.shape.values)
    return None


def _bindings(func: relax.Function) -> list[tuple[str, str, tuple | None]]:
    return [
        (b.var.name, op_name(b.value), _shape(b.var.ty))
        for block in func.body.blocks
        for b in block.bindings
    ]


@tvm.transform.module_pass(opt_level=0, name="ConvertComputeDtype")
class ConvertComputeDtype:
    """Compute ``main`` in ``dtype`` (``"float16"`` or ``"bfloat16"``) with fp32 accumulation
    in matmuls and convs; ``"float32"`` leaves the module as it is.

    Parameters
    ----------
    dtype : str
        ``"float32"``, ``"float16"`` or ``"bfloat16"``; whether the target computes in it is
        checked by :func:`tvm_sparse.targets.check_compute_dtype`, not here.
    """

    def __init__(self, dtype: str = "float16"):
        if dtype not in ("float32", *_LOW):
            raise ValueError(f"dtype={dtype!r} is not valid: use float32, float16 or bfloat16")
        self.dtype = dtype

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        if self.dtype == "float32":
            return mod
        # ToMixedPrecision converts only inside dataflow blocks; a module built by hand may
        # have none
        mod = relax.transform.ConvertToDataflow()(mod)
        gv = mod.get_global_var("main")
        prepare = _Prepare(mod)
        mod = mod.clone()
        mod.update_func(gv, prepare.visit_expr(mod["main"]))
        originals = _bindings(mod["main"])
        converted = relax.transform.ToMixedPrecision(out_dtype="float32")(mod)
        func = converted["main"]
        taken = {p.name for p in func.params} | {name for name, _, _ in originals}
        restore = _Restore(converted, originals, self.dtype, taken)
        converted.update_func(converted.get_global_var("main"), restore.visit_expr(func))
        return converted
