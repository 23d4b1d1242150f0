"""Rewrite matmuls and conv2ds with pruned constant weights into sparse kernels, where faster.

``RewriteToSparse`` reads the records ``DetectSparsity`` left under ``"tvm_sparse.weights"``,
asks :mod:`~tvm_sparse.passes.sparse_decisions` per layer (sparse format or dense: the layer's
candidates timed on this machine where a ``LayerTimer`` is given, else the measured cost model
of :mod:`tvm_sparse.kernels.cost_model`), compresses the chosen weights to BSR or N:M constants
and replaces the op by a ``call_tir`` of a kernel that is already scheduled
(``tirx.is_scheduled``, ``"tvm_sparse.kernel"``), which ``ApplySchedules`` then skips. Every
candidate gets a row in ``"tvm_sparse.decisions"``: the kernel, the pattern and why.

Before::

    @R.function
    def main(x: R.Tensor((128, 768), "float32")):
        with R.dataflow():
            lv = R.matmul(x, metadata["ir.GenericConst"][0])  # (768, 3072), 90% zero 16x1 blocks
            R.output(lv)
        return lv

After::

    @R.function
    def main(x: R.Tensor((128, 768), "float32")):
        R.func_attr({"tvm_sparse.decisions": {"lv": {"kernel": "bsr_matmul[16x1]",
            "pattern": "block 16x1", "reason": "density 0.10 in 16x1 blocks: est. 6.2x ..."}}})
        with R.dataflow():
            lv = R.call_tir(cls.bsr_matmul_16x1, (x, data, indices, indptr),
                            out_ty=R.Tensor((128, 3072), "float32"))
            R.output(lv)
        return lv

Leading batch dims of a matmul are folded into the rows (``reshape``, a view). Conv2d
(``NCHW``/``OIHW``, ``groups=1``) runs 1x1 stride-1 convolutions directly on the activations
and larger ones through ``im2col``. A matmul's bias add and activation (:mod:`._epilogue`) are
applied by the sparse kernel as it stores its outputs, and their Relax ops go. Anything the
pass cannot handle (symbolic shapes, non-fp32, grouped convolution, other layouts) keeps its
dense op and its decision row says why.

CUDA targets use the kernels of :mod:`tvm_sparse.kernels.gpu` and, with no GPU to calibrate
on, a fixed rule in place of the cost model (every reason starts "uncalibrated GPU rule"):
BSR when a block of at least 8 rows (the detected one, 16x1 or 8x1) covers the weight at block
density <= 0.3, else the compressed N:M kernel for a matmul weight that conforms to 2:4 or 4:8,
else dense. Activations are reshaped to ``(1, M, K)`` for the kernels. Only 1x1, stride-1,
unpadded ``NCHW`` convolutions go sparse (their activations are the kernel's ``KM`` input);
others stay dense, there being no GPU im2col yet. Config choices are honoured as on CPUs. Other
non-llvm targets keep every layer dense.

Pipeline: after ``DetectSparsity`` (and ``ShrinkPrunedChannels`` with a second
``DetectSparsity``), before ``LegalizeOps``.

Configuration (``sparsity=``)
-----------------------------
``"auto"``
    Per layer, the fastest of the detected block shape, 1x1 (unstructured) and N:M, if the
    cost model estimates it at least ``min_speedup`` (1.1) times faster than dense.
``"off"``
    Everything stays dense (decisions still recorded).
``dict``
    ``{binding_name: choice, ..., "*": default_choice}``; choices are ``"auto"``, ``"dense"``,
    ``"bsr"`` (detected block), ``"bsr:RxC"`` (a given block), ``"unstructured"`` (1x1 BSR),
    ``"nm"`` (detected N:M) and ``"nm:N:M"``. A named choice is honoured even where the model
    says it is slower (the reason says so). Unknown choices and names that are not candidates
    raise ``ValueError`` listing the valid ones. A :class:`SparsityConfig` is accepted too.
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

from ..kernels.bsr_matmul import BSRMatmulKnobs, bsr_matmul, bsr_matmul_kernel_name
from ..kernels.cost_model import Calibration, load_calibration
from ..kernels.epilogue import Epilogue
from ..kernels.formats import to_bsr, to_nm
from ..kernels.gpu import CUDATileKnobs, cuda_bsr_matmul, cuda_nm_matmul, nm_group_offsets
from ..kernels.nm_matmul import NMMatmulKnobs, nm_matmul
from ..kernels.sparse_conv2d import Conv2DGeometry, im2col
from ._bindings import function_bindings, only_users, unique_binding_names
from ._epilogue import matmul_epilogue
from .detect_sparsity import WEIGHTS_ATTR, WeightSparsity, constant_weight_of
from .gpu_sparse_rule import GPU_RULE, decide_cuda
from .sparse_decisions import (
    IM2COL_BYTES_PER_S,
    WINOGRAD_SPEEDUP,
    LayerChoice,
    Plan,
    SparsityConfig,
    TableCheck,
    decide,
    measured,
    runs_as_winograd,
)

__all__ = ["DECISIONS_ATTR", "LayerChoice", "RewriteToSparse", "SparsityConfig"]


#: PrimFunc attribute: FLOPs the sparse kernel performs (stored values only), for the report.
FLOPS_ATTR = "tvm_sparse.flops"

DECISIONS_ATTR = "tvm_sparse.decisions"


@tvm.transform.module_pass(opt_level=0, name="RewriteToSparse")
class RewriteToSparse:
    """Replace pruned matmul / conv2d weights by scheduled sparse kernels where they are faster.

    Parameters
    ----------
    target : tvm.target.Target | str | dict, optional
        Decides vector width and the calibration table; the current target if omitted.
    sparsity : "auto" | "off" | dict | SparsityConfig
        See the module docstring.
    calibration : Calibration, optional
        Cost-model table; :func:`~tvm_sparse.kernels.load_calibration` of the target if omitted.
    layer_timer : tvm_sparse.layer_timing.LayerTimer, optional
        Times the candidates of each ``"auto"`` matmul on this machine (the first source of
        evidence); without one, or where it cannot measure, the calibration table decides.
    """

    def __init__(
        self,
        target: Target | str | dict | None = None,
        *,
        sparsity: Any = "auto",
        calibration: Calibration | None = None,
        layer_timer: Any = None,
    ) -> None:
        self.target = _as_target(target)
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
        if self.target.kind.name not in ("llvm", "cuda"):
            return _record_dense(mod, f"no sparse kernel for {self.target.kind.name} yet: dense")
        rewriter = _SparseRewriter(mod, self.target, self.config, calibration, self.layer_timer)
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
    def __init__(
        self,
        mod: IRModule,
        target: Target,
        config: SparsityConfig,
        calibration: Calibration,
        layer_timer: Any = None,
    ) -> None:
        super().__init__(mod)
        self.layer_timer = layer_timer
        self.target = target
        self.config = config
        self.calibration = calibration
        self.knobs = BSRMatmulKnobs.for_target(target)
        self.nm_knobs = NMMatmulKnobs.for_target(target)
        self.cuda_knobs = CUDATileKnobs()
        self.cuda = target.kind.name == "cuda"
        self.check = TableCheck()  # the table against the layers measured in this compile
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
        if dtype != "float32" or out_dtype != "float32" or weight.dtype != np.float32:
            return None, Plan("dense", "dense", f"dtype {dtype}: sparse kernels are fp32 only")
        if call.op.name == "relax.matmul":
            if len(x_shape) < 1:
                return None, Plan("dense", "dense", "scalar activations")
            m = int(np.prod(x_shape[:-1])) if len(x_shape) > 1 else 1
            if self.cuda:
                plan = decide_cuda(name, info, weight, "matmul", self.config)
                if plan.kernel == "dense":
                    return None, plan
                return self._cuda_matmul(x, out_shape, weight, m, plan), plan
            plan = decide(name, info, weight, "matmul", m, self.config, self.calibration)
            epilogue = matmul_epilogue(self._var, weight.shape[0], self._users, self._values)
            timer = self.layer_timer
            if timer is not None and self.config.choice_for(name).kind == "auto":
                # leading batch dims fold into the rows, as the rewrite does
                measure = lambda c: timer.matmul((m, weight.shape[1]), weight, c, epilogue.ops)  # noqa: E731
                plan = measured(plan, info, weight, m, self.calibration, timer, measure,
                                check=self.check, min_speedup=self.config.min_speedup)  # fmt: skip
            if plan.kernel == "dense":
                return None, plan
            if epilogue.ops:
                self._absorbed.update(epilogue.absorbed)
                label = epilogue.kernel.label
                plan = dataclasses.replace(plan, reason=f"{plan.reason}; {label} in its stores")
            return self._matmul(x, x_shape, out_shape, weight, m, plan, epilogue), plan
        attrs = call.attrs
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
            kernel=tuple(int(v) for v in op_info["kernel"]),
            strides=tuple(int(v) for v in attrs.strides),
            padding=tuple(int(v) for v in attrs.padding),
            dilation=tuple(int(v) for v in attrs.dilation),
        )
        if self.cuda:
            if not geom.is_pointwise:
                return None, Plan(
                    "dense",
                    "dense",
                    f"{GPU_RULE}: only 1x1, stride-1, unpadded conv2d maps onto the GPU kernels "
                    "(no GPU im2col kernel yet): dense",
                )
            plan = decide_cuda(name, info, weight, "conv2d", self.config)
            if plan.kernel == "dense":
                return None, plan
            return self._cuda_pointwise_conv2d(x, x_shape, out_shape, weight, plan), plan
        oh, ow = geom.out_hw
        # im2col writes and the kernel reads a (K, OH*OW) copy of each image; the calibration
        # (matmuls) does not include that traffic.
        # The kernel runs image by image, so its rate is the one for M = OH*OW rows.
        copy_bytes = 0 if geom.is_pointwise else 8 * weight.shape[1] * oh * ow
        winograd = runs_as_winograd(geom, weight.shape[0], self.target)
        plan = decide(
            name, info, weight, "conv2d", oh * ow, self.config, self.calibration,
            overhead_s=copy_bytes / IM2COL_BYTES_PER_S,
            dense_speedup=WINOGRAD_SPEEDUP if winograd else 1.0,
        )  # fmt: skip
        timer = self.layer_timer
        if timer is not None and self.config.choice_for(name).kind == "auto":
            oihw = weight.reshape(weight.shape[0], geom.channels, *geom.kernel)
            measure = lambda c: timer.conv2d(  # noqa: E731
                tuple(x_shape), oihw, strides=geom.strides, padding=geom.padding,
                dilation=geom.dilation, candidates=c,
            )  # fmt: skip
            plan = measured(
                plan, info, weight, oh * ow, self.calibration, timer, measure, op="conv2d",
                check=self.check, min_speedup=self.config.min_speedup,
            )  # fmt: skip
        if plan.kernel == "dense":
            return None, plan
        if plan.nm is not None:  # N:M conv weights run through the 1x1 BSR kernel
            plan = dataclasses.replace(plan, kernel=bsr_matmul_kernel_name((1, 1)), block=(1, 1),
                                       nm=None)  # fmt: skip
        epilogue = matmul_epilogue(
            self._var, weight.shape[0], self._users, self._values, channel_axis=1
        )
        if epilogue.ops:
            self._absorbed.update(epilogue.absorbed)
            plan = dataclasses.replace(
                plan, reason=f"{plan.reason}; {epilogue.kernel.label} in its stores"
            )
        return self._conv2d(x, geom, out_shape, weight, plan, epilogue.kernel, epilogue.bias), plan

    def _emit(self, expr: relax.Expr, suffix: str) -> relax.Var:
        return self.builder_.emit(expr, name_hint=f"{self._layer}_{suffix}")

    def _matmul(self, x, x_shape, out_shape, weight, m, plan: Plan, epilogue) -> relax.Expr:
        n, k = weight.shape
        fused = epilogue.kernel
        x2 = x if len(x_shape) == 2 else self._emit(relax.op.reshape(x, (m, k)), "x2d")
        if plan.nm is not None:
            knobs = self.nm_knobs.resolve(m, n, plan.nm)
            mat = to_nm(weight, plan.nm, row_multiple=knobs.group)
            func = nm_matmul(m, k, n, plan.nm, mat.values.shape[0], knobs=knobs, epilogue=fused)
            func = func.with_attr(FLOPS_ATTR, 2 * m * int(mat.values.size))
            gv = self.builder_.add_func(func, _func_name(plan.kernel))
            args = [x2, relax.const(mat.values), relax.const(mat.columns)]
        else:
            knobs = self.knobs.resolve(plan.block, m, n)
            bsr = to_bsr(weight, plan.block, row_multiple=knobs.group, nonempty=True)
            func = bsr_matmul(
                m, k, n, plan.block, bsr.nnzb, bsr.block_rows, knobs=knobs, epilogue=fused
            )
            func = func.with_attr(FLOPS_ATTR, 2 * m * int(bsr.data.size))
            gv = self.builder_.add_func(func, _func_name(plan.kernel))
            data = bsr.data_cr() if knobs.variant == "rows" else bsr.data
            if knobs.variant == "m":
                x2 = self._emit(relax.op.reshape(x2, (1, m, k)), "x3d")
            args = [x2, relax.const(data), relax.const(bsr.indices), relax.const(bsr.indptr)]
        if fused.bias:
            args.append(relax.const(np.ascontiguousarray(epilogue.bias, dtype="float32")))
        y_shape = (1, m, n) if plan.nm is None and knobs.variant == "m" else (m, n)
        y = relax.call_tir(gv, args, out_ty=relax.TensorType(y_shape, "float32"))
        if list(y_shape) == list(out_shape):
            return y
        return relax.op.reshape(self._emit(y, "sparse"), out_shape)

    def _conv2d(self, x, geom: Conv2DGeometry, out_shape, weight, plan: Plan, fused: Epilogue,
                bias: np.ndarray | None) -> relax.Expr:  # fmt: skip
        n, k = weight.shape
        oh, ow = geom.out_hw
        hw = oh * ow
        if geom.is_pointwise:
            cols = self._emit(relax.op.reshape(x, (geom.batch, k, hw)), "cols")
        else:
            gv_col = self.builder_.add_func(im2col(geom), "im2col")
            cols = self._emit(
                relax.call_tir(
                    gv_col, [x], out_ty=relax.TensorType((geom.batch, k, hw), "float32")
                ),
                "cols",
            )
        knobs = self.knobs.resolve(
            plan.block, hw, n, batch=geom.batch, x_layout="KM", y_layout="NM"
        )
        bsr = to_bsr(weight, plan.block, row_multiple=knobs.group, nonempty=True)
        layouts = {"batch": geom.batch, "x_layout": "KM", "y_layout": "NM"}
        func = bsr_matmul(hw, k, n, plan.block, bsr.nnzb, bsr.block_rows, knobs=knobs,
                          epilogue=fused, **layouts)  # fmt: skip
        func = func.with_attr(FLOPS_ATTR, 2 * geom.batch * hw * int(bsr.data.size))
        gv = self.builder_.add_func(func, _func_name(plan.kernel))
        args = [cols, relax.const(bsr.data), relax.const(bsr.indices), relax.const(bsr.indptr)]
        if fused.bias:  # one per output channel: a row of the NM output
            args.append(relax.const(np.ascontiguousarray(bias, dtype="float32")))
        y = self._emit(
            relax.call_tir(gv, args, out_ty=relax.TensorType((geom.batch, n, hw), "float32")),
            "sparse",
        )
        return relax.op.reshape(y, out_shape)

    def _cuda_matmul(self, x, out_shape, weight: np.ndarray, m: int, plan: Plan) -> relax.Expr:
        n, k = weight.shape
        x3 = self._emit(relax.op.reshape(x, (1, m, k)), "x3d")
        if plan.nm is not None:
            mat = to_nm(weight, plan.nm)
            func = cuda_nm_matmul(m, k, n, plan.nm, mat.values.shape[0], knobs=self.cuda_knobs)
            stored = int(mat.values.size)
            args = [x3, relax.const(mat.values), relax.const(nm_group_offsets(mat))]
        else:
            bsr = to_bsr(weight, plan.block, row_multiple=1, nonempty=True)
            func = cuda_bsr_matmul(
                m, k, n, plan.block, bsr.nnzb, bsr.block_rows, knobs=self.cuda_knobs
            )
            stored = int(bsr.data.size)
            args = [x3, relax.const(bsr.data), relax.const(bsr.indices), relax.const(bsr.indptr)]
        gv = self.builder_.add_func(
            func.with_attr(FLOPS_ATTR, 2 * m * stored), _func_name(plan.kernel)
        )
        y = self._emit(
            relax.call_tir(gv, args, out_ty=relax.TensorType((1, m, n), "float32")), "sparse"
        )
        return relax.op.reshape(y, out_shape)

    def _cuda_pointwise_conv2d(self, x, x_shape, out_shape, weight: np.ndarray, plan: Plan):
        n, k = weight.shape
        batch, _, height, width = x_shape
        hw = height * width
        cols = self._emit(relax.op.reshape(x, (batch, k, hw)), "cols")
        bsr = to_bsr(weight, plan.block, row_multiple=1, nonempty=True)
        layouts = {"batch": batch, "x_layout": "KM", "y_layout": "NM"}
        func = cuda_bsr_matmul(hw, k, n, plan.block, bsr.nnzb, bsr.block_rows,
                               knobs=self.cuda_knobs, **layouts)  # fmt: skip
        func = func.with_attr(FLOPS_ATTR, 2 * batch * hw * int(bsr.data.size))
        gv = self.builder_.add_func(func, _func_name(plan.kernel))
        args = [cols, relax.const(bsr.data), relax.const(bsr.indices), relax.const(bsr.indptr)]
        y = self._emit(
            relax.call_tir(gv, args, out_ty=relax.TensorType((batch, n, hw), "float32")), "sparse"
        )
        return relax.op.reshape(y, out_shape)


def _func_name(kernel: str) -> str:
    """``bsr_matmul[16x1]`` -> ``bsr_matmul_16x1`` (a valid global symbol)."""
    return kernel.replace("[", "_").replace("]", "").replace(":", "_")
