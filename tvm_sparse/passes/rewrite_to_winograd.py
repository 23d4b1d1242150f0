"""RewriteToWinograd: 3x3 stride-1 NHWC convs as Winograd F(2x2, 3x3) kernels on CPUs."""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.target import Target

from ..kernels.winograd_conv2d import (
    KERNEL_NAME,
    WinogradKnobs,
    winograd_applies,
    winograd_conv2d,
    winograd_weight,
)
from ..targets.backend import backend_of
from ..targets.facts import num_cores
from ._bindings import function_bindings
from .collect_report import DECISIONS_ATTR
from .rewrite_to_sparse import FLOPS_ATTR

__all__ = ["RewriteToWinograd"]

_CONV2D, _ADD, _RELU = (tvm.ir.Op.get(n) for n in ("relax.nn.conv2d", "relax.add", "relax.nn.relu"))


def _static(expr: relax.Expr) -> tuple[int, ...] | None:
    shape = expr.ty.shape if isinstance(expr.ty, relax.TensorType) else None
    if shape is None or not all(isinstance(d, tirx.IntImm) for d in shape.values):
        return None
    return tuple(int(d) for d in shape.values)


def _why_not(call: relax.Call, lanes: int) -> str | None:
    """Why ``call`` (a conv2d) cannot run as the Winograd kernel; None when it can."""
    attrs = call.attrs
    x, w = call.args
    if not isinstance(w, tvm.ir.Constant):
        return "weight is not a constant"
    if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NHWC", "HWIO", "NHWC"):
        return "not NHWC"
    # ONNX's importer leaves out_dtype unset (None): the input's dtype
    if str(x.ty.dtype) != "float32" or str(attrs.out_dtype) not in ("", "None", "void", "float32"):
        return "not float32"
    if int(attrs.groups) != 1 or any(
        int(v) != 1 for v in [*attrs.strides, *attrs.dilation, *attrs.padding]
    ):
        return "not a stride-1, padding-1 conv"
    x_shape, w_shape = _static(x), _static(w)
    if x_shape is None:
        return "dynamic shape"
    return winograd_applies(
        x_shape, w_shape, lanes, strides=attrs.strides, padding=attrs.padding,
        dilation=attrs.dilation, groups=attrs.groups,
    )  # fmt: skip


@mutator
class _WinogradRewriter(PyExprMutator):
    """Replaces each chain ``conv2d -> [add bias] -> [add residual] -> [relu]`` by one call."""

    def __init__(self, mod: tvm.IRModule, target: Target, knobs: WinogradKnobs, timer=None):
        super().__init__(mod)
        self.knobs = knobs
        self.cores = num_cores(target)
        self.timer = timer
        self.chains: dict[relax.Var, dict] = {}  # last var of a chain -> its parts
        self.absorbed: set[relax.Var] = set()  # bindings a chain replaces
        self.rewritten: list[str] = []
        self.why: dict[str, str] = {}  # conv name -> the evidence for its choice

    def worth_it(self, conv: relax.Var, call: relax.Call) -> bool:
        """Whether the Winograd kernel beats the direct conv on this layer: timed on this
        machine where a layer timer is given (the direct conv, the simpler kernel, wins inside
        the margin); by rule otherwise (fewer FLOPs, transforms in cache)."""
        rule = "by rule: 2.25x fewer FLOPs than the direct conv; not timed"
        if self.timer is None:
            self.why[conv.name] = rule
            return True
        x_shape, w_shape = _static(call.args[0]), _static(call.args[1])
        timing = self.timer.winograd(x_shape, w_shape)
        if timing is None:
            why = "budget spent" if self.timer.exhausted else "could not be timed"
            self.why[conv.name] = f"{rule} ({why} on {self.timer.runner.name})"
            return True
        times = f"direct {timing.ms['dense']:.3f} ms, winograd {timing.ms['winograd']:.3f} ms"
        where = timing.where
        if timing.winner == "dense":
            self.why[conv.name] = (
                f"3x3 stride-1 conv kept direct: Winograd not faster by the margin ({where}: "
                f"{times})"
            )
            return False
        self.why[conv.name] = f"{where}: {times}"
        return True

    def plan(self, func: relax.Function) -> None:
        """Find the chains: each conv's result, and each op after it, used once."""
        bindings = function_bindings(func)
        uses: dict[relax.Var, list[relax.Var]] = {}
        values = dict(bindings)
        for var, value in bindings:
            for arg in value.args if isinstance(value, relax.Call) else []:
                if isinstance(arg, relax.Var):
                    uses.setdefault(arg, []).append(var)
        outputs = set()
        relax.analysis.post_order_visit(
            func.body.body, lambda e: outputs.add(e) if isinstance(e, relax.Var) else None
        )

        def only_user(var):
            users = uses.get(var, [])
            return users[0] if len(users) == 1 and var not in outputs else None

        for var, value in bindings:
            if not (isinstance(value, relax.Call) and value.op == _CONV2D):
                continue
            if _why_not(value, self.knobs.lanes) is not None or not self.worth_it(var, value):
                continue
            out_channels = _static(var)[3]
            chain = {"conv": var, "call": value, "bias": None, "residual": None, "relu": False}
            last, members = var, [var]
            nxt = only_user(last)
            step = values.get(nxt)
            if step is not None and step.op == _ADD:
                other = step.args[1] if step.args[0].same_as(last) else step.args[0]
                if isinstance(other, tvm.ir.Constant) and _static(other) in (
                    (out_channels,),
                    (1, 1, 1, out_channels),
                ):
                    chain["bias"] = other.value.numpy().reshape(out_channels)
                    last, members = nxt, [*members, nxt]
            nxt = only_user(last)
            step = values.get(nxt)
            if step is not None and step.op == _ADD:
                other = step.args[1] if step.args[0].same_as(last) else step.args[0]
                if (
                    isinstance(other, relax.Var)
                    and not other.same_as(last)
                    and _static(other) == _static(var)
                    and str(other.ty.dtype) == "float32"
                ):
                    chain["residual"] = other
                    last, members = nxt, [*members, nxt]
            nxt = only_user(last)
            step = values.get(nxt)
            if step is not None and step.op == _RELU:
                chain["relu"] = True
                last, members = nxt, [*members, nxt]
            self.chains[last] = chain
            self.absorbed.update(members)

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        var = binding.var
        if var not in self.absorbed:
            super().visit_var_binding_(binding)
            return
        chain = self.chains.get(var)
        if chain is None:
            return  # computed by the call that replaces its chain, at the chain's end
        conv, call = chain["conv"], chain["call"]
        x, w = call.args
        _, h, wd, c = _static(x)
        f = _static(conv)[3]
        weight = w.value.numpy()
        nr = self.knobs.output_vectors(f) * self.knobs.lanes
        bias = chain["bias"] if chain["bias"] is not None else np.zeros(f, "float32")
        residual = chain["residual"]
        func = winograd_conv2d(
            h, wd, c, f, knobs=self.knobs, cores=self.cores,
            residual=residual is not None, relu=chain["relu"],
        ).with_attr(FLOPS_ATTR, 2 * h * wd * f * 9 * c)  # fmt: skip
        gv = self.builder_.add_func(func, KERNEL_NAME)
        args = [self.visit_expr(x), relax.const(winograd_weight(weight, nr)), relax.const(bias)]
        if residual is not None:
            args.append(self.visit_expr(residual))
        value = self.builder_.normalize(relax.call_tir(gv, args, out_ty=conv.ty))
        # the call keeps the conv's var (and name: the report and decisions key on it)
        self.builder_.emit_normalized(relax.VarBinding(conv, value))
        self.set_var_remap(var, conv)
        self.rewritten.append(conv.name)


@tvm.transform.module_pass(opt_level=0, name="RewriteToWinograd")
class RewriteToWinograd:
    """Rewrite 3x3 stride-1 NHWC convs with constant weights, and the bias add, residual add
    and ReLU after them, into one Winograd F(2x2, 3x3) kernel each (``winograd_conv2d``).

    The kernel does 2.25x fewer FLOPs than the direct conv, with its transforms in cache, but
    reads and writes more memory per FLOP, so small layers can lose: with a ``layer_timer``
    each conv's two kernels are timed on this machine (the direct conv wins inside the
    margin), and the report row says which and why. Convs it cannot take (odd sizes,
    strides, batch above 1, channels that are not whole vectors) stay direct. The weight's
    transform is computed here, once; the ReLU, residual and bias bindings go away, and the
    call keeps the conv's binding name, so the report row of the conv names the kernel.

    Before::

        lv1 = R.nn.conv2d(x, w, padding=[1, 1, 1, 1], data_layout="NHWC", kernel_layout="HWIO")
        lv2 = R.add(lv1, bias)
        lv3 = R.add(lv2, residual)
        lv4 = R.nn.relu(lv3)

    After::

        lv1 = R.call_tir(winograd_conv2d, (x, u, bias, residual), out_sinfo=...)

    Pipeline: after ``ConvertToNHWC``, before ``LegalizeOps``; llvm targets only (others are
    left unchanged). Runs under ``with target:`` or with ``target`` given.

    Parameters
    ----------
    target : Target, optional
        The llvm target; default ``Target.current()``.
    knobs : WinogradKnobs, optional
        Default :meth:`WinogradKnobs.for_target`.
    layer_timer : tvm_sparse.layer_timing.LayerTimer, optional
        Times each conv's direct and Winograd kernels on this machine; without one, every conv
        the kernel takes runs it (by rule, as the report says).
    """

    def __init__(
        self,
        target: Target | None = None,
        knobs: WinogradKnobs | None = None,
        layer_timer: Any = None,
    ):
        self.target = target
        self.knobs = knobs
        self.layer_timer = layer_timer

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        target = self.target or Target.current(allow_none=True)
        backend = backend_of(target, allow_none=True)
        if backend is None or not backend.winograd:
            return mod
        knobs = self.knobs or WinogradKnobs.for_target(target)
        rewriter = _WinogradRewriter(mod, target, knobs, self.layer_timer)
        for gv, func in list(mod.functions_items()):
            if not isinstance(func, relax.Function) or (func.attrs and func.attrs.get("Primitive")):
                continue
            rewriter.why = {}
            rewriter.plan(func)
            if not rewriter.why:
                continue
            rewriter.rewritten = []
            new_func = rewriter.visit_expr(func) if rewriter.chains else func
            decisions = {
                str(k): dict(v) for k, v in ((func.attrs or {}).get(DECISIONS_ATTR) or {}).items()
            }
            for name, evidence in rewriter.why.items():
                record = decisions.get(name, {"kernel": "", "pattern": "dense", "reason": ""})
                why = evidence
                if name in rewriter.rewritten:
                    why = f"3x3 stride-1 conv as Winograd F(2x2, 3x3) ({evidence})"
                record["reason"] = f"{record['reason']}; {why}" if record["reason"] else why
                decisions[name] = record
            rewriter.builder_.update_func(gv, new_func.with_attr(DECISIONS_ATTR, decisions))
            rewriter.chains, rewriter.absorbed = {}, set()
        return rewriter.builder_.get()
