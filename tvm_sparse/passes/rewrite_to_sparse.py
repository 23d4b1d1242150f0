"""Rewrite matmuls and conv2ds with pruned constant weights into sparse kernels, where faster.

``RewriteToSparse`` reads the records ``DetectSparsity`` left under ``"tvm_sparse.weights"`` and
asks the target's backend (:func:`~tvm_sparse.targets.backend.backend_of`) which kernel each
layer runs: on CPUs the layer's candidates timed here, else the calibration table
(:mod:`.sparse_decisions`); on CUDA GPUs a fixed rule (:mod:`.gpu_sparse_rule`). Chosen weights
become BSR or N:M constants and the op a ``call_tir`` of an already scheduled kernel
(:mod:`.sparse_kernels`), with the bias add and activation after it where the kernel applies
them. Each candidate gets a row in ``"tvm_sparse.decisions"``: the kernel, the pattern and why;
one the pass cannot handle (symbolic shapes, non-fp32, grouped or non-NCHW conv) stays dense.

Before::

    lv = R.matmul(x, metadata["ir.GenericConst"][0])  # (768, 3072), 90% zero 16x1 blocks

After::

    R.func_attr({"tvm_sparse.decisions": {"lv": {"kernel": "bsr_matmul[16x1]",
        "pattern": "block 16x1", "reason": "density 0.10 in 16x1 blocks: est. ...x faster"}}})
    lv = R.call_tir(cls.bsr_matmul_16x1, (x, data, indices, indptr),
                    out_ty=R.Tensor((128, 3072), "float32"))

``sparsity=`` is described in :mod:`.sparsity_config`. Pipeline: after ``DetectSparsity`` (and
``ShrinkPrunedChannels`` with a second ``DetectSparsity``), before ``LegalizeOps``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import tvm
from tvm import relax
from tvm.ir import IRModule
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.target import Target

from ..kernels.bsr_matmul import bsr_matmul_kernel_name
from ..kernels.cost_model import Calibration, load_calibration
from ..kernels.gpu.mma_sp_matmul import mma_sp_kernel_name
from ..kernels.sparse_conv2d import Conv2DGeometry, im2col
from ..targets.backend import backend_of
from ._bindings import function_bindings, only_users, unique_binding_names
from ._epilogue import MatmulEpilogue, matmul_epilogue
from .collect_report import DECISIONS_ATTR
from .detect_sparsity import WEIGHTS_ATTR, WeightSparsity, constant_weight_of
from .gpu_sparse_rule import GPURule
from .sparse_decisions import CPUDecisions, Plan
from .sparse_kernels import CPUSparseKernels, CUDASparseKernels, SparseKernel
from .sparsity_config import LayerChoice, SparsityConfig

#: Each target family's chooser of a kernel per pruned layer, and the emitters of its kernels.
_CHOOSERS = {
    "cpu": lambda target, config, calibration, timer, _dtype: CPUDecisions(
        target, config, calibration, timer
    ),
    "cuda": lambda target, config, _calibration, _timer, dtype: GPURule(config, target, dtype),
}
_KERNELS = {
    "cpu": lambda target, _dtype: CPUSparseKernels(target),
    "cuda": CUDASparseKernels,
}

__all__ = ["DECISIONS_ATTR", "LayerChoice", "RewriteToSparse", "SparsityConfig"]


#: PrimFunc attribute: FLOPs the sparse kernel performs (stored values only), for the report.
FLOPS_ATTR = "tvm_sparse.flops"


@tvm.transform.module_pass(opt_level=0, name="RewriteToSparse")
class RewriteToSparse:
    """Replace pruned matmul / conv2d weights by scheduled sparse kernels where they are faster.

    Parameters
    ----------
    target : tvm.target.Target | str | dict, optional
        Decides vector width and the calibration table; the current target if omitted.
    sparsity : "auto" | "off" | dict | SparsityConfig
        Per-layer choices; see :mod:`~tvm_sparse.passes.sparsity_config`.
    calibration : Calibration, optional
        Cost-model table; :func:`~tvm_sparse.kernels.load_calibration` of the target if omitted.
    layer_timer : tvm_sparse.layer_timing.LayerTimer, optional
        Times the candidates of each ``"auto"`` matmul on this machine (the first source of
        evidence); without one, or where it cannot measure, the calibration table decides.
    dtype : str
        The dtype the model will compute in (``ConvertComputeDtype`` runs after this pass);
        the GPU chooser and kernels see it, the CPU ones are fp32 only.
    fast_math : bool
        The model computes with ``UseFastMath``: a kernel applies a GELU after it in its
        stores with the same polynomial erf, where otherwise the GELU stays a pass of its own.
    """

    def __init__(
        self,
        target: Target | str | dict | None = None,
        *,
        sparsity: Any = "auto",
        calibration: Calibration | None = None,
        layer_timer: Any = None,
        dtype: str = "float32",
        fast_math: bool = False,
    ) -> None:
        self.target = _as_target(target)
        self.dtype = dtype
        self.fast_math = fast_math
        self.config = SparsityConfig.from_arg(sparsity)
        self.calibration = calibration
        self.layer_timer = layer_timer

    def transform_module(self, mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
        board = self.layer_timer.runner.board if self.layer_timer is not None else None
        calibration = self.calibration or load_calibration(self.target, device=board)
        candidates = {
            name
            for func in mod.functions.values()
            if isinstance(func, relax.Function) and func.attrs and WEIGHTS_ATTR in func.attrs
            for name in func.attrs[WEIGHTS_ATTR]
        }
        unknown = sorted(set(self.config.layers) - candidates)
        if unknown:
            raise ValueError(
                f"sparsity: {unknown} are not sparsity candidates of this model; "
                f"candidates are {sorted(candidates)}"
            )
        backend = backend_of(self.target, allow_none=True)
        if backend is None:
            return _record_dense(mod, f"no sparse kernel for {self.target.kind.name} yet: dense")
        chooser = _CHOOSERS[backend.family](
            self.target, self.config, calibration, self.layer_timer, self.dtype
        )
        kernels = _KERNELS[backend.family](self.target, self.dtype)
        rewriter = _SparseRewriter(mod, chooser, kernels, self.fast_math)
        for gv, func in list(mod.functions_items()):
            if isinstance(func, relax.Function) and func.attrs and WEIGHTS_ATTR in func.attrs:
                rewriter.rewrite_function(gv, func)
        return rewriter.builder_.get()


def _record_dense(mod: IRModule, reason: str) -> IRModule:
    """Leave every candidate dense and say why in ``"tvm_sparse.decisions"``."""
    for gv, func in list(mod.functions_items()):
        if not (isinstance(func, relax.Function) and func.attrs and WEIGHTS_ATTR in func.attrs):
            continue
        decisions = {str(k): dict(v) for k, v in (func.attrs.get(DECISIONS_ATTR) or {}).items()}
        for name in map(str, func.attrs[WEIGHTS_ATTR]):
            if decisions.get(name, {}).get("kernel", "dense") == "dense":
                decisions[name] = Plan("dense", "dense", reason).record()
        mod[gv] = func.with_attr(DECISIONS_ATTR, decisions)
    return mod


def _as_target(target: Target | str | dict | None) -> Target:
    if isinstance(target, Target):
        return target
    if target is None:
        current = Target.current(allow_none=True)
        return current if current is not None else Target("llvm")
    return Target(target)


# -- the rewriter -----------------------------------------------------------------------------


def _static_shape(expr: relax.Expr) -> tuple[list[int], str] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    shape = ty.shape
    values = getattr(shape, "values", None)
    if values is None or not all(isinstance(v, tvm.tirx.IntImm) for v in values):
        return None
    return [int(v) for v in values], str(ty.dtype)


@mutator
class _SparseRewriter(PyExprMutator):
    """Rewrites the pruned layers of a module's functions, one function at a time.

    ``chooser`` decides each layer (``matmul``/``conv2d`` return a :class:`Plan`); ``kernels``
    builds the chosen kernel (:mod:`.sparse_kernels`). Both come from the target's backend.
    """

    def __init__(self, mod: IRModule, chooser: Any, kernels: Any, fast_math: bool) -> None:
        super().__init__(mod)
        self.chooser = chooser
        self.kernels = kernels
        self.fast_math = fast_math
        self._names: dict[relax.Var, str] = {}
        self._values: dict[relax.Var, relax.Expr] = {}
        self._records: Mapping[str, Any] = {}
        self._decisions: dict[str, dict[str, str]] = {}
        self._absorbed: dict[relax.Var, relax.Var] = {}  # epilogue var -> the var it becomes

    def rewrite_function(self, gv: relax.GlobalVar, func: relax.Function) -> None:
        self._names = unique_binding_names(func)
        self._values = dict(function_bindings(func))
        self._records = func.attrs[WEIGHTS_ATTR]
        self._decisions = {}
        self._users = only_users(func)
        new_func = self.visit_expr(func)
        existing = func.attrs.get(DECISIONS_ATTR) if func.attrs else None
        merged = {str(k): dict(v) for k, v in (existing or {}).items()}
        for name, record in self._decisions.items():
            earlier = merged.get(name)
            if record["kernel"] == "dense" and earlier and earlier.get("kernel") != "dense":
                # a layer ShrinkPrunedChannels made smaller stays so; add why it is not sparse
                earlier["reason"] = f"{earlier.get('reason', '')}; {record['reason']}"
                continue
            if earlier and earlier.get("pattern") == "channel":  # why zero channels stayed
                record = {**record, "reason": f"{record['reason']}; {earlier.get('reason', '')}"}
            merged[name] = record
        for name in self._records:  # candidates this pass never reached keep a row too
            merged.setdefault(str(name), Plan("dense", "dense", "op not found").record())
        new_func = new_func.with_attr(DECISIONS_ATTR, merged)
        self.builder_.update_func(gv, new_func)

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        source = self._absorbed.get(binding.var)
        if source is not None:  # a bias add or activation the kernel before applies
            value = self.visit_expr(source)
            if not isinstance(binding.var, relax.DataflowVar):
                value = self.builder_.emit_output(value, name_hint=binding.var.name)
            self.set_var_remap(binding.var, value)
            return
        name = self._names.get(binding.var)
        if name is None or name not in self._records:
            super().visit_var_binding_(binding)
            return
        self._layer = name  # intermediate bindings are named after the layer they compute
        self._var = binding.var
        new_value, plan = self._rewrite(name, binding.value)
        self._decisions[name] = plan.record()
        if new_value is None:
            super().visit_var_binding_(binding)
            return
        if isinstance(binding.var, relax.DataflowVar):
            new_var = self.builder_.emit(new_value, name_hint=binding.var.name)
        else:
            new_var = self.builder_.emit_output(new_value, name_hint=binding.var.name)
        self.set_var_remap(binding.var, new_var)

    # -- per op -------------------------------------------------------------------------------

    def _rewrite(self, name: str, call: relax.Expr) -> tuple[relax.Expr | None, Plan]:
        found = constant_weight_of(call, self._values)
        if found is None:
            return None, Plan("dense", "dense", "weight is not a constant the pass can read")
        weight, op_info = found
        info = WeightSparsity.from_attr(self._records[name])
        x = self.visit_expr(call.args[0])
        shape = _static_shape(x)
        out = _static_shape(call)
        if shape is None or out is None:
            return None, Plan("dense", "dense", "symbolic or unknown shapes: kept dense")
        (x_shape, dtype), (out_shape, out_dtype) = shape, out
        dtypes = {dtype, out_dtype, str(weight.dtype)}
        if dtypes == {"float16"}:  # an fp16 module: the GPU's 2:4 kernel, or dense
            if "float16" not in self.kernels.matmul_dtypes:
                return None, Plan("dense", "dense", "fp16: no fp16 sparse kernel for this target")
        elif dtypes != {"float32"}:
            return None, Plan(
                "dense",
                "dense",
                f"dtype {dtype}: sparse kernels are fp32 (fp16: the CUDA 2:4 kernel)",
            )
        if call.op.name == "relax.matmul":
            return self._matmul(name, info, weight, x, x_shape, out_shape)
        return self._conv2d(
            name, info, weight, op_info["kernel"], call.attrs, x, x_shape, out_shape
        )

    def _matmul(self, name, info, weight, x, x_shape, out_shape) -> tuple[relax.Expr | None, Plan]:
        if len(x_shape) < 1:
            return None, Plan("dense", "dense", "scalar activations")
        m = int(np.prod(x_shape[:-1])) if len(x_shape) > 1 else 1
        epilogue = self._epilogue(weight.shape[0])
        plan = self.chooser.matmul(name, info, weight, m, epilogue.ops)
        if plan.kernel == "dense":
            return None, plan
        plan = self._absorb(plan, epilogue)
        kernel = self.kernels.matmul(weight, m, plan, epilogue.kernel)
        for view in kernel.x_views:  # leading batch dims fold into the rows
            if self.kernels.views_always or list(view) != list(x_shape):
                x, x_shape = self._emit(relax.op.reshape(x, view), f"x{len(view)}d"), view
        return self._call(kernel, x, out_shape, plan, epilogue), plan

    def _conv2d(self, name, info, weight, kernel_hw, attrs, x, x_shape, out_shape):
        if attrs.data_layout != "NCHW" or attrs.out_layout != "NCHW" or int(attrs.groups) != 1:
            return None, Plan(
                "dense",
                "dense",
                f"conv2d {attrs.data_layout}, groups={int(attrs.groups)}: only NCHW, groups=1",
            )
        batch, channels, height, width = x_shape
        geom = Conv2DGeometry(
            batch=batch,
            channels=channels,
            height=height,
            width=width,
            kernel=tuple(int(v) for v in kernel_hw),
            strides=tuple(int(v) for v in attrs.strides),
            padding=tuple(int(v) for v in attrs.padding),
            dilation=tuple(int(v) for v in attrs.dilation),
        )
        plan = self.chooser.conv2d(name, info, weight, geom)
        if plan.kernel == "dense":
            return None, plan
        if plan.kernel == mma_sp_kernel_name():
            return self._pointwise_as_matmul(weight, geom, x, plan), plan
        if plan.nm is not None:  # N:M conv weights run through the 1x1 BSR kernel
            plan = dataclasses.replace(plan, kernel=bsr_matmul_kernel_name((1, 1)), block=(1, 1),
                                       nm=None)  # fmt: skip
        epilogue = self._epilogue(weight.shape[0], channel_axis=1)
        plan = self._absorb(plan, epilogue)
        oh, ow = geom.out_hw
        cols_shape = (batch, weight.shape[1], oh * ow)  # the kernel's (batch, K, OH*OW) input
        if geom.is_pointwise:
            cols = relax.op.reshape(x, cols_shape)
        else:
            gv_col = self.builder_.add_func(im2col(geom), "im2col")
            cols = relax.call_tir(gv_col, [x], out_ty=relax.TensorType(cols_shape, "float32"))
        kernel = self.kernels.conv2d(weight, batch, oh * ow, plan, epilogue.kernel)
        return self._call(kernel, self._emit(cols, "cols"), out_shape, plan, epilogue), plan

    def _pointwise_as_matmul(self, weight, geom, x, plan) -> relax.Expr:
        """A 1x1 conv through a matmul kernel: channels-last rows of ``x`` times the weight,
        the result back to NCHW (the kernel reads each pixel's channels contiguously)."""
        rows = geom.batch * geom.height * geom.width
        nhwc = self._emit(relax.op.permute_dims(x, [0, 2, 3, 1]), "nhwc")
        out = weight.shape[0]
        plain = MatmulEpilogue()
        kernel = self.kernels.matmul(weight.reshape(out, -1), rows, plan, plain.kernel)
        for view in kernel.x_views:
            nhwc = self._emit(relax.op.reshape(nhwc, view), f"x{len(view)}d")
        nhwc_shape = (geom.batch, geom.height, geom.width, out)
        y = self._emit(self._call(kernel, nhwc, nhwc_shape, plan, plain), "y_nhwc")
        return relax.op.permute_dims(y, [0, 3, 1, 2])

    def _epilogue(self, channels: int, channel_axis: int = -1) -> MatmulEpilogue:
        """The bias add and activation after the layer that the kernels can apply."""
        if not self.kernels.fuses_epilogue:
            return MatmulEpilogue()
        return matmul_epilogue(self._var, channels, self._users, self._values, channel_axis,
                               self.fast_math)  # fmt: skip

    def _absorb(self, plan: Plan, epilogue: MatmulEpilogue) -> Plan:
        """Drop the epilogue's Relax ops, which the kernel applies now."""
        if not epilogue.ops:
            return plan
        self._absorbed.update(epilogue.absorbed)
        return dataclasses.replace(
            plan, reason=f"{plan.reason}; {epilogue.kernel.label} in its stores"
        )

    def _emit(self, expr: relax.Expr, suffix: str) -> relax.Var:
        return self.builder_.emit(expr, name_hint=f"{self._layer}_{suffix}")

    def _call(self, kernel: SparseKernel, x: relax.Expr, out_shape, plan: Plan,
              epilogue: MatmulEpilogue) -> relax.Expr:  # fmt: skip
        """Add ``kernel`` to the module and call it on ``x``, viewed back as the op's output."""
        func = kernel.func.with_attr(FLOPS_ATTR, kernel.flops)
        gv = self.builder_.add_func(func, _func_name(plan.kernel))
        # an fp16 kernel in a model that ConvertComputeDtype has not converted yet
        if kernel.x_dtype != self.builder_.normalize(x).ty.dtype:
            x = self._emit(relax.op.astype(x, kernel.x_dtype), "sparse_in")
        args = [x, *(relax.const(w) for w in kernel.weights)]
        if epilogue.kernel.bias:  # one per output channel
            args.append(relax.const(np.ascontiguousarray(epilogue.bias, dtype="float32")))
        y = relax.call_tir(gv, args, out_ty=relax.TensorType(kernel.y_shape, kernel.y_dtype))
        if not self.kernels.views_always and list(kernel.y_shape) == list(out_shape):
            return y
        return relax.op.reshape(self._emit(y, "sparse"), out_shape)


def _func_name(kernel: str) -> str:
    """``bsr_matmul[16x1]`` -> ``bsr_matmul_16x1`` (a valid global symbol)."""
    return kernel.replace("[", "_").replace("]", "").replace(":", "_")
