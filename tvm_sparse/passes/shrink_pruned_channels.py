"""Remove pruned channels so that pruned convolutions and linears become smaller dense ops."""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import relax
from tvm.ir import IRModule
from tvm.relax.expr_functor import PyExprMutator, mutator

from ._bindings import unique_binding_names, with_functions
from ._channel_graph import ChannelGraph, WeightOp, _const_value, static_shape
from .detect_sparsity import WEIGHTS_ATTR, _detect_in_function

__all__ = ["DECISIONS_ATTR", "ShrinkPrunedChannels"]

DECISIONS_ATTR = "tvm_sparse.decisions"


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
    in the mean and variance). A removed channel that
    still carries a constant (``ReLU(bias)``, a batch-norm shift) is folded exactly into each
    consumer: into its bias for matmul and unpadded conv, and as a constant
    ``(1, O, H_out, W_out)`` map for padded convs, whose borders see zero padding.

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
        rounding = _Rounding(graph, channel_multiple, layer_timer)
        removed, reasons = (
            graph.removable_roots(channel_multiple, rounding) if graph.supported else (set(), {})
        )
        plan = _Plan(graph, removed, reasons, rounding.exact)
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


class _Rounding:
    """Whether a shrunk layer keeps zero channels up to a multiple of the SIMD width: timed on
    the layer timer's device (memoised: the graph asks again each time its removals change),
    by rule (rounded up) without a timer or once it cannot answer."""

    def __init__(self, graph: ChannelGraph, multiple: int, timer: Any) -> None:
        self.graph, self.multiple, self.timer = graph, multiple, timer
        self.memo: dict[tuple, str | None] = {}
        #: layers measured faster at their exact count: var -> (count, evidence)
        self.exact: dict[relax.Var, tuple[int, str]] = {}

    def __call__(self, op: WeightOp, kept: int, wanted: int, kept_in: int) -> str | None:
        key = (op.var, kept, wanted, kept_in)
        if key not in self.memo:
            self.memo[key] = self._decide(op, kept, wanted, kept_in)
        return self.memo[key]

    def _decide(self, op: WeightOp, kept: int, wanted: int, kept_in: int) -> str | None:
        name = self.graph.names.get(op.var, op.var.name)
        rule = (
            f"kept so that {name} has a multiple of {self.multiple} output channels (the SIMD"
            " width; by rule"
        )
        if self.timer is None:
            return f"{rule}, not timed)"
        x_shape = static_shape(op.x)
        if x_shape is None or None in x_shape:
            return f"{rule}: dynamic input shape, not timed)"
        rng = np.random.default_rng(0)  # the time depends on the shapes alone
        weight = rng.standard_normal((kept, kept_in, *op.weight.shape[2:])).astype("float32")
        if op.kind == "conv2d":
            attrs = op.call.attrs
            conv = tuple(tuple(int(v) for v in a) for a in
                         (attrs.strides, attrs.padding, attrs.dilation))  # fmt: skip
            x_shape = (x_shape[0], kept_in, *x_shape[2:])
        else:
            conv, x_shape = None, (*x_shape[:-1], kept_in)
        timing = self.timer.widths(x_shape, weight, wanted, conv=conv)
        if timing is None:
            why = "budget spent" if self.timer.exhausted else "could not be timed"
            return f"{rule}: {why} on {self.timer.runner.name})"
        times = f"{kept} channels {timing.ms['dense']:.3f} ms, {wanted} channels " + (
            f"{timing.ms[f'rounded:{wanted}']:.3f} ms"
        )
        if timing.winner == "dense":
            self.exact[op.var] = (kept, f"not rounded up to {wanted}: {timing.where}, {times}")
            return None
        return f"kept so that {name} has {wanted} output channels: {timing.where}, {times}"


class _Plan:
    """What to do with each binding, from the removable channel classes."""

    def __init__(
        self,
        graph: ChannelGraph,
        removed: set[int],
        reasons: dict[int, str],
        exact: dict[relax.Var, tuple[int, str]] | None = None,
    ):
        self.graph = graph
        self.removed = removed
        self.reasons = reasons
        self.exact = exact or {}
        self.keep: dict[relax.Var, np.ndarray] = {}
        for var in graph.chan:
            mask = graph.keep_mask(var, removed)
            if mask is not None and not mask.all():
                self.keep[var] = mask
        self.corrections: dict[relax.Var, np.ndarray] = {}
        self.fold_into: dict[relax.Var, relax.Var] = {}  # weight op -> bias add absorbing it
        for var, op in graph.weight_ops.items():
            corr = self._correction(op)
            if corr is not None:
                self.corrections[var] = corr
                users = graph.uses.get(var, [])
                if len(users) == 1 and users[0] is not None:
                    value = graph.values[users[0]]
                    if (
                        isinstance(value, relax.Call)
                        and value.op.name == "relax.add"
                        and any(isinstance(a, tvm.ir.GenericConst) for a in value.args)
                    ):
                        self.fold_into[var] = users[0]
        self.changes = bool(self.keep) or bool(self.corrections)

    def per_axis(self, var: relax.Var) -> dict[int, np.ndarray]:
        """Kept indices along each channel axis of ``var`` (only axes that lose channels)."""
        mask = self.keep.get(var)
        if mask is None:
            return {}
        axes = self.graph.chan[var].axes
        out = {}
        for i, ax in enumerate(axes):
            kept = mask.any(axis=tuple(j for j in range(mask.ndim) if j != i))
            if not kept.all():
                out[ax] = np.flatnonzero(kept)
        return out

    def _correction(self, op: WeightOp) -> np.ndarray | None:
        """Exact contribution of removed constant input channels, shaped to broadcast."""
        keep = self.keep.get(op.x)
        if keep is None or op.kind == "depthwise":
            return None
        cv = self.graph.chan[op.x].cv
        gone = ~keep & ~np.isnan(cv)
        values = np.where(gone, cv, 0.0)
        if not values.any():
            return None
        weight = op.weight.astype(np.float64)
        if op.kind == "matmul":
            corr = weight @ values  # (N,)
            return corr if corr.any() else None
        groups = int(op.call.attrs.groups)
        out_c, cg = weight.shape[:2]
        og = out_c // groups
        # a[o, i, j] = sum_c v_c * W[o, c, i, j] over the input channels of o's group
        a = np.einsum(
            "gocij,gc->goij",
            weight.reshape(groups, og, cg, *weight.shape[2:]),
            values.reshape(groups, cg),
        ).reshape(out_c, *weight.shape[2:])
        attrs = op.call.attrs
        if not any(int(p) for p in attrs.padding):
            corr = a.sum(axis=(1, 2))
            return corr.reshape(1, out_c, 1, 1) if corr.any() else None
        in_shape, out_shape = static_shape(op.x), static_shape(op.var)
        if None in in_shape[2:] or None in out_shape[2:]:
            raise ValueError("padded conv with constant inputs needs static spatial shapes")
        top, left = int(attrs.padding[0]), int(attrs.padding[1])
        (sh, sw), (dh, dw) = [int(s) for s in attrs.strides], [int(d) for d in attrs.dilation]
        kh, kw = weight.shape[2:]
        rows = np.arange(out_shape[2])[:, None] * sh - top + np.arange(kh)[None, :] * dh
        cols = np.arange(out_shape[3])[:, None] * sw - left + np.arange(kw)[None, :] * dw
        valid_r = ((rows >= 0) & (rows < in_shape[2])).astype(np.float64)  # (Ho, kh)
        valid_c = ((cols >= 0) & (cols < in_shape[3])).astype(np.float64)  # (Wo, kw)
        corr = np.einsum("oij,hi,wj->ohw", a, valid_r, valid_c)
        return corr[None] if corr.any() else None

    def decisions(self) -> dict[str, dict[str, Any]]:
        graph = self.graph
        out: dict[str, dict[str, Any]] = {}
        for var, op in graph.weight_ops.items():
            name = graph.names.get(var, var.name)
            out_c = op.weight.shape[0]
            zero_rows = ~op.weight.reshape(out_c, -1).any(axis=1)
            keep_out = self.keep.get(var)
            keep_in = self.keep.get(op.x)
            removed_out = 0 if keep_out is None else int((~keep_out).sum())
            if op.kind == "depthwise" and keep_out is None:
                removed_out = 0
            removed_in = 0 if keep_in is None else int((~keep_in).sum())
            if removed_out or removed_in:
                parts = []
                if removed_out:
                    parts.append(f"removed {removed_out}/{out_c} output channels")
                if removed_in and op.kind != "depthwise":
                    parts.append(f"removed {removed_in}/{keep_in.size} input channels")
                if var in self.corrections:
                    parts.append("folded constant inputs into the bias")
                kept_out = out_c - removed_out
                if self.exact.get(var, (None,))[0] == kept_out:
                    parts.append(self.exact[var][1])
                kept_zero = zero_rows & (keep_out if keep_out is not None else True)
                if kept_zero.any() and op.kind != "depthwise":
                    roots = graph.uf.roots(graph.chan[var].ids.ravel()[kept_zero])
                    why = sorted({self.reasons.get(int(r), "not removable") for r in roots})
                    parts.append(
                        f"kept {int(kept_zero.sum())} zero output channels: " + "; ".join(why)
                    )
                out[name] = {
                    "kernel": "dense-shrunk",
                    "pattern": "channel",
                    "reason": ", ".join(parts),
                }
            elif zero_rows.any():
                roots = graph.uf.roots(graph.chan[var].ids.ravel()[zero_rows])
                why = sorted({self.reasons.get(int(r), "not removable") for r in roots})
                out[name] = {
                    "kernel": "dense",
                    "pattern": "channel",
                    "reason": f"kept {int(zero_rows.sum())}/{out_c} zero output channels: "
                    + "; ".join(why),
                }
        return out


@mutator
class _Shrinker(PyExprMutator):
    """Re-emits the bindings of a function with the channels of ``plan`` removed."""

    def __init__(self, mod: IRModule, plan: _Plan) -> None:
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
            new_value = self._weight_op(self.graph.weight_ops[var])
        elif var in self.plan.keep or any(a in self.pending for a in _call_args(value)):
            new_value = self._channel_op(var, value)
        if new_value is None:
            super().visit_var_binding_(binding)
            return
        corr = self.plan.corrections.get(var)
        separate = corr is not None and var not in self.plan.fold_into
        new = self._emit(var, new_value, inner=separate)
        if separate:
            corr = self._slice_out(var, corr)
            dtype = self.graph.weight_ops[var].weight.dtype
            folded = relax.op.add(new, relax.const(corr.astype(dtype)))
            new = self._emit(var, folded, name=f"{var.name}_fold")
        elif corr is not None:
            self.pending[var] = self._slice_out(var, corr)
        self.set_var_remap(var, new)

    def _slice_out(self, var: relax.Var, corr: np.ndarray) -> np.ndarray:
        for ax, idx in self.plan.per_axis(var).items():
            axis = ax - (len(static_shape(var)) - corr.ndim)
            corr = np.take(corr, idx, axis=axis)
        return corr

    def _weight_op(self, op: WeightOp) -> relax.Expr:
        call = op.call
        x = self.visit_expr(op.x)
        keep_out = self.plan.keep.get(op.var)
        keep_in = self.plan.keep.get(op.x)
        weight = op.weight
        if op.kind == "matmul":
            if keep_out is not None:
                weight = weight[keep_out]
            if keep_in is not None:
                weight = weight[:, keep_in]
            return relax.op.matmul(
                x, relax.const(np.ascontiguousarray(weight.T)), out_dtype=call.attrs.out_dtype
            )
        groups = int(call.attrs.groups)
        if op.kind == "depthwise":
            if keep_out is not None:
                weight = weight[keep_out]
            groups = int(keep_in.sum()) if keep_in is not None else groups
        elif op.kind == "conv2d":
            if keep_out is not None:
                weight = weight[keep_out]
            if keep_in is not None:
                weight = weight[:, keep_in]
        else:  # grouped: every group keeps the same number of channels (checked)
            out_c, cg = weight.shape[:2]
            og = out_c // groups
            keep_in = np.ones(groups * cg, bool) if keep_in is None else keep_in
            keep_out = np.ones(out_c, bool) if keep_out is None else keep_out
            rows = []
            for o in np.flatnonzero(keep_out):
                g = o // og
                rows.append(weight[o][keep_in[g * cg : (g + 1) * cg]])
            weight = np.stack(rows)
        attrs = call.attrs
        return relax.op.nn.conv2d(
            x,
            relax.const(np.ascontiguousarray(weight)),
            strides=attrs.strides,
            padding=attrs.padding,
            dilation=attrs.dilation,
            groups=groups,
            data_layout=attrs.data_layout,
            kernel_layout=attrs.kernel_layout,
            out_layout=attrs.out_layout,
            out_dtype=attrs.out_dtype if attrs.out_dtype else None,
        )

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
            out_ndim = len(static_shape(var))
            for ax, idx in self.plan.per_axis(var).items():
                axis = ax - (out_ndim - const.ndim)
                if axis >= 0 and const.shape[axis] > 1:
                    const = np.take(const, idx, axis=axis)
            tensor = value.args[1 - i]
            if tensor in self.pending and op == "relax.add":
                corr = self.pending.pop(tensor)
                const = (const + corr).astype(const.dtype)
            args[i] = relax.const(np.ascontiguousarray(const))
            return relax.Call(value.op, args, value.attrs, value.ty_args)
        return None

    def _layer_norm(self, var: relax.Var, call: relax.Call, x: relax.Expr) -> relax.Expr:
        """LayerNorm over the kept channels, with the removed ones' constants still counted:
        ``D`` channels of which ``R`` removed hold ``c``, so with ``d = x - mean`` over the kept
        ones, ``mean = (sum(x) + sum(c)) / D`` and
        ``var = (sum(d^2) + R mean^2 - 2 mean sum(c) + sum(c^2)) / D``."""
        old_x = call.args[0]
        keep = self.plan.keep[old_x]
        consts = self.graph.chan[old_x].cv[~keep]
        attrs = call.attrs
        dtype = str(old_x.ty.dtype)
        size, removed = keep.size, int((~keep).sum())
        s1, s2 = float(consts.sum()), float((consts * consts).sum())

        def const(v) -> relax.Expr:
            return relax.const(np.asarray(v, dtype=dtype))

        def emit(expr: relax.Expr, suffix: str) -> relax.Var:
            return self._emit(var, expr, name=f"{var.name}_{suffix}", inner=True)

        total = relax.op.sum(x, axis=[-1], keepdims=True)
        mean = emit(relax.op.multiply(relax.op.add(total, const(s1)), const(1.0 / size)), "mean")
        d = emit(relax.op.subtract(x, mean), "centered")
        ss = relax.op.sum(relax.op.multiply(d, d), axis=[-1], keepdims=True)
        # sum(d^2) + R mean^2 - 2 s1 mean + s2, written (R mean - 2 s1) mean + s2
        rest = relax.op.add(
            relax.op.multiply(
                relax.op.subtract(relax.op.multiply(mean, const(removed)), const(2 * s1)), mean
            ),
            const(s2),
        )
        variance = relax.op.multiply(relax.op.add(ss, rest), const(1.0 / size))
        scale = relax.op.rsqrt(relax.op.add(variance, const(attrs.epsilon)))
        out = relax.op.multiply(d, emit(scale, "rstd"))
        gamma, beta = (_const_value(a, self.graph.values) for a in call.args[1:])
        if attrs.scale:
            out = relax.op.multiply(out, const(np.broadcast_to(gamma, keep.shape)[keep]))
        if attrs.center:
            out = relax.op.add(out, const(np.broadcast_to(beta, keep.shape)[keep]))
        return out


def _call_args(value: relax.Expr) -> list[relax.Expr]:
    return list(value.args) if isinstance(value, relax.Call) else []
