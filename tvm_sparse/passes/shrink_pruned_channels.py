"""Remove pruned channels so that pruned convolutions and linears become smaller dense ops."""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import relax
from tvm.ir import IRModule
from tvm.relax.expr_functor import PyExprMutator, mutator

from ._bindings import unique_binding_names, with_functions
from ._channel_atoms import static_shape
from ._channel_graph import ChannelGraph
from ._channel_layer_norm import shrink_layer_norm
from ._channel_plan import ShrinkPlan
from ._channel_rounding import LayerRounding
from ._channel_weights import shrink_weight_op
from .collect_report import DECISIONS_ATTR
from .detect_sparsity import WEIGHTS_ATTR, _detect_in_function

__all__ = ["DECISIONS_ATTR", "ShrinkPrunedChannels"]


@tvm.transform.module_pass(opt_level=0, name="ShrinkPrunedChannels")
class ShrinkPrunedChannels:
    """Drop channels that pruning made useless, giving smaller dense conv2d / matmul ops.

    A channel goes when nothing observable depends on it: its producer's weight row is zero (or
    its consumers' weight columns are), and every op it passes through can drop it: bias add and
    decomposed batch norm (per-channel constants are sliced), activations, pooling, reshape /
    flatten (a channel is a contiguous run of features), permute, residual add (only channels
    removable in *every* operand), concat (offsets), depthwise and grouped conv (equal counts per
    group), and attention written as ``softmax(Q K^T) V`` (a head is removed when its V
    projection is constant or its output-projection columns are zero; the importer's
    ``scaled_dot_product_attention`` lowering and unknown ops pin the channels they touch, with
    a reason), and LayerNorm over channels (exactly: a removed channel's constant still counts
    in the mean and variance). A removed channel that still carries a constant (``ReLU(bias)``,
    a batch-norm shift) is folded exactly into each consumer: into its bias for matmul and
    unpadded conv, and as a constant ``(1, O, H_out, W_out)`` map for padded convs, whose
    borders see zero padding.

    Before::

        lv = R.nn.conv2d(x, w0)            # w0: (4, 3, 1, 1), rows 1 and 3 zero
        lv1 = R.nn.relu(lv)
        lv2 = R.nn.conv2d(lv1, w1)         # w1: (2, 4, 1, 1)

    After::

        lv = R.nn.conv2d(x, w0[[0, 2]])    # (2, 3, 1, 1)
        lv1 = R.nn.relu(lv)
        lv2 = R.nn.conv2d(lv1, w1[:, [0, 2]])

    Every conv2d / matmul whose channels were removed, or whose zero channels had to stay, gets
    an entry in the function attribute ``"tvm_sparse.decisions"`` (merged with entries of other
    passes) keyed by binding name: ``{"kernel": "dense-shrunk" | "dense", "pattern": "channel",
    "reason": ...}``. Graphs it cannot handle come out unchanged, with the reason recorded.
    A stale ``"tvm_sparse.weights"`` attribute is refreshed.

    Pipeline: after ``DecomposeOpsForInference`` and ``FoldConstant``, after ``DetectSparsity``
    and before the sparse rewrite; data layout NCHW, weights OIHW.

    Parameters
    ----------
    channel_multiple : int
        Where a shrunk dense conv2d / matmul would have an output channel count that is not
        a multiple of this (the target's SIMD width: the pipeline passes it), weigh keeping
        zero channels up to the next multiple: dense schedules vectorise over output channels,
        and a ragged count leaves a partial vector in every row.
    layer_timer : tvm_sparse.layer_timing.LayerTimer, optional
        Decide that rounding per layer by timing the layer at both counts on the device
        (the exact count, the simpler choice, wins inside the margin); without one, or once
        its budget is spent, every such layer is rounded up by rule. The decision row says
        which, with the times.
    """

    def __init__(self, channel_multiple: int = 1, layer_timer: Any = None) -> None:
        if channel_multiple < 1:
            raise ValueError(f"channel_multiple must be at least 1, got {channel_multiple}")
        self.channel_multiple = channel_multiple
        self.layer_timer = layer_timer

    def transform_module(self, mod: IRModule, ctx: tvm.transform.PassContext) -> IRModule:
        updates = {}
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function) and not _is_primitive(func):
                new_func = _shrink_function(mod, func, self.channel_multiple, self.layer_timer)
                if new_func is not func:
                    updates[gv] = new_func
        return with_functions(mod, updates)


def _is_primitive(func: relax.Function) -> bool:
    return func.attrs is not None and "Primitive" in func.attrs and int(func.attrs["Primitive"])


def _shrink_function(
    mod: IRModule, func: relax.Function, channel_multiple: int = 1, layer_timer: Any = None
) -> relax.Function:
    names = unique_binding_names(func)
    try:
        graph = ChannelGraph(func, names)
        rounding = LayerRounding(graph, channel_multiple, layer_timer)
        removed, reasons = (
            graph.removable_roots(channel_multiple, rounding) if graph.supported else (set(), {})
        )
        plan = ShrinkPlan(graph, removed, reasons, rounding.exact)
    except Exception as err:  # noqa: BLE001 - an unsupported graph is left unchanged
        return _with_decisions(func, {}, f"not analysed: {type(err).__name__}: {err}")
    decisions = plan.decisions()
    if not plan.changes:
        return _with_decisions(func, decisions) if decisions else func
    try:
        new_func = _Shrinker(mod, plan).visit_expr(func)
        new_func = relax.analysis.remove_all_unused(new_func)
    except Exception as err:  # noqa: BLE001
        return _with_decisions(func, {}, f"rewrite failed: {type(err).__name__}: {err}")
    if func.attrs is not None and WEIGHTS_ATTR in func.attrs:
        records = _detect_in_function(new_func)
        new_func = (
            new_func.with_attr(WEIGHTS_ATTR, records)
            if records
            else new_func.without_attr(WEIGHTS_ATTR)
        )
    return _with_decisions(new_func, decisions)


def _with_decisions(
    func: relax.Function, decisions: dict[str, dict[str, Any]], failure: str | None = None
) -> relax.Function:
    merged: dict[str, Any] = {}
    if func.attrs is not None and DECISIONS_ATTR in func.attrs:
        merged.update({str(k): v for k, v in func.attrs[DECISIONS_ATTR].items()})
    if failure is not None:
        merged["__function__"] = {"kernel": "dense", "pattern": "channel", "reason": failure}
    merged.update(decisions)
    return func.with_attr(DECISIONS_ATTR, merged) if merged else func


@mutator
class _Shrinker(PyExprMutator):
    """Re-emits the bindings of a function with the channels of ``plan`` removed."""

    def __init__(self, mod: IRModule, plan: ShrinkPlan) -> None:
        super().__init__(mod)
        self.plan = plan
        self.graph = plan.graph
        self.pending: dict[relax.Var, np.ndarray] = {}  # old weight-op var -> correction

    def _emit(
        self, old: relax.Var, value: relax.Expr, name: str | None = None, inner: bool = False
    ) -> relax.Var:
        value = self.builder_.normalize(value)
        name = name or old.name
        dataflow = isinstance(old, relax.DataflowVar) or (
            inner and self.builder_.current_block_is_dataflow()
        )
        cls = relax.DataflowVar if dataflow else relax.Var
        new = cls(name, value.ty)
        self.builder_.emit_normalized(relax.VarBinding(new, value))
        return new

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        var, value = binding.var, binding.value
        new_value = None
        if var in self.graph.weight_ops and (
            var in self.plan.keep
            or self.graph.weight_ops[var].x in self.plan.keep
            or var in self.plan.corrections
        ):
            op = self.graph.weight_ops[var]
            new_value = shrink_weight_op(
                op, self.visit_expr(op.x), self.plan.keep.get(var), self.plan.keep.get(op.x)
            )
        elif var in self.plan.keep or any(a in self.pending for a in _call_args(value)):
            new_value = self._channel_op(var, value)
        if new_value is None:
            super().visit_var_binding_(binding)
            return
        corr = self.plan.corrections.get(var)
        separate = corr is not None and var not in self.plan.fold_into
        new = self._emit(var, new_value, inner=separate)
        if corr is not None:
            corr = _take_kept(corr, self.plan.per_axis(var), len(static_shape(var)))
        if separate:
            dtype = self.graph.weight_ops[var].weight.dtype
            folded = relax.op.add(new, relax.const(corr.astype(dtype)))
            new = self._emit(var, folded, name=f"{var.name}_fold")
        elif corr is not None:
            self.pending[var] = corr
        self.set_var_remap(var, new)

    def _channel_op(self, var: relax.Var, value: relax.Expr) -> relax.Expr | None:
        if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
            return None
        op = value.op.name
        args = [self.visit_expr(a) for a in value.args]
        if op == "relax.nn.layer_norm":
            return self._layer_norm(var, value, args[0])
        if op in ("relax.reshape", "relax.broadcast_to"):
            shape = list(static_shape(var))
            for ax, idx in self.plan.per_axis(var).items():
                shape[ax] = len(idx)
            if op == "relax.reshape":
                return relax.op.reshape(args[0], shape)
            return relax.op.broadcast_to(args[0], shape)
        consts = [i for i, a in enumerate(value.args) if isinstance(a, tvm.ir.GenericConst)]
        if len(args) == 2 and len(consts) == 1:
            i = consts[0]
            const = value.args[i].value.numpy()
            const = _take_kept(const, self.plan.per_axis(var), len(static_shape(var)))
            tensor = value.args[1 - i]
            if tensor in self.pending and op == "relax.add":
                corr = self.pending.pop(tensor)
                const = (const + corr).astype(const.dtype)
            args[i] = relax.const(np.ascontiguousarray(const))
            return relax.Call(value.op, args, value.attrs, value.ty_args)
        return None

    def _layer_norm(self, var: relax.Var, call: relax.Call, x: relax.Expr) -> relax.Expr:
        keep = self.plan.keep[call.args[0]]

        def emit(expr: relax.Expr, suffix: str) -> relax.Var:
            return self._emit(var, expr, name=f"{var.name}_{suffix}", inner=True)

        removed_consts = self.graph.chan[call.args[0]].cv[~keep]
        return shrink_layer_norm(call, x, keep, removed_consts, emit)


def _call_args(value: relax.Expr) -> list[relax.Expr]:
    return list(value.args) if isinstance(value, relax.Call) else []


def _take_kept(array: np.ndarray, per_axis: dict[int, np.ndarray], ndim: int) -> np.ndarray:
    """``array``, broadcast against a tensor of rank ``ndim``, cut to the kept indices
    ``per_axis`` on each channel axis it does not broadcast over."""
    for ax, idx in per_axis.items():
        axis = ax - (ndim - array.ndim)
        if axis >= 0 and array.shape[axis] > 1:
            array = np.take(array, idx, axis=axis)
    return array
