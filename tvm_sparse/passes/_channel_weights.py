"""Constant-weight matmul and conv2d (dense, depthwise, grouped) when shrinking channels: their
channel rule, the exact correction for removed input channels that hold a constant, and the
rewrite that slices their weights.

These ops are where removal is decided: an input channel may go where its weight column is zero
or its value is a known constant; an output channel's atoms start a new class, with the constant
a zero weight row (or constant inputs) gives it. A depthwise conv instead carries its input
atoms through, one class per channel.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ._channel_atoms import Chan, ChannelAtoms, WeightOp, static_shape


def visit_weight_op(
    graph: ChannelAtoms, var: relax.Var, call: relax.Call, matrix: np.ndarray
) -> bool:
    """Channel rule of a matmul / conv2d whose constant weight in (out, in) orientation is
    ``matrix`` (``constant_weight_of``)."""
    x = call.args[0]
    if not isinstance(x, relax.Var) or x not in graph.chan:
        return False
    shape = static_shape(x)
    if call.op.name == "relax.matmul":
        weight = matrix  # (N, K)
        xc = graph.on_axes(x, (len(shape) - 1,))
        if xc is None or len(static_shape(var)) != len(shape):
            return False
        col_zero = ~weight.any(axis=0)
        graph.add_edge(var, x, xc, col_zero)
        graph.weight_ops[var] = WeightOp(var, call, weight, "matmul", x)
        graph.fresh(var, (len(shape) - 1,))
        graph.chan[var].cv = _fold_linear(weight, xc.cv)
        return True
    attrs = call.attrs
    if attrs.data_layout != "NCHW" or (attrs.out_layout or "NCHW") != "NCHW":
        return False
    xc = graph.on_axes(x, (1,))
    if xc is None:
        return False
    weight = call.args[1].value.numpy()
    groups = int(attrs.groups)
    out_c, cg = weight.shape[:2]
    padded = any(int(p) for p in attrs.padding)
    if groups == 1:
        col_zero = ~weight.any(axis=(0, 2, 3))
        graph.add_edge(var, x, xc, col_zero)
        graph.weight_ops[var] = WeightOp(var, call, weight, "conv2d", x)
        graph.fresh(var, (1,))
        cv = _fold_linear(weight.sum(axis=(2, 3)), xc.cv)
        if padded:  # a constant input is not uniform at padded borders
            cv[weight.any(axis=(1, 2, 3))] = np.nan
        graph.chan[var].cv = cv
        return True
    if cg == 1 and groups == xc.ids.shape[0]:
        mult = out_c // groups
        ids = np.repeat(xc.ids, mult)
        cv = np.repeat(xc.cv, mult) * weight.sum(axis=(1, 2, 3))
        if padded:
            # zero padding breaks a constant at the borders, unless the constant is zero
            cv[weight.any(axis=(1, 2, 3)) & (np.repeat(xc.cv, mult) != 0)] = np.nan
        graph.weight_ops[var] = WeightOp(var, call, weight, "depthwise", x)
        graph.chan[var] = Chan((1,), ids, cv)
        return True
    # General grouped conv: input channel c of group g feeds output rows of group g only.
    og = out_c // groups
    ok = np.zeros(xc.ids.shape, dtype=bool)
    cv = np.full(out_c, np.nan)
    for g in range(groups):
        rows = weight[g * og : (g + 1) * og]
        ok[g * cg : (g + 1) * cg] = ~rows.any(axis=(0, 2, 3))
        cv[g * og : (g + 1) * og] = _fold_linear(
            rows.sum(axis=(2, 3)), xc.cv[g * cg : (g + 1) * cg]
        )
    if padded:
        cv[weight.any(axis=(1, 2, 3))] = np.nan
    graph.add_edge(var, x, xc, ok)
    graph.weight_ops[var] = WeightOp(var, call, weight, "grouped", x)
    graph.fresh(var, (1,))
    graph.chan[var].cv = cv
    return True


def _fold_linear(weight_oi: np.ndarray, cv_in: np.ndarray) -> np.ndarray:
    """Constant of each output row when every input it reads through a nonzero weight is known."""
    known = ~np.isnan(cv_in)
    nonzero = weight_oi != 0
    needs_unknown = (nonzero & ~known[None, :]).any(axis=1)
    values = (weight_oi.astype(np.float64) * np.where(known, cv_in, 0.0)[None, :]).sum(axis=1)
    return np.where(needs_unknown, np.nan, values)


def constant_input_correction(
    op: WeightOp, keep_in: np.ndarray | None, cv_in: np.ndarray
) -> np.ndarray | None:
    """Exact contribution to ``op``'s output of its removed input channels (``~keep_in``) that
    hold the constants ``cv_in``, shaped to broadcast; ``None`` when there is none."""
    if keep_in is None or op.kind == "depthwise":
        return None
    gone = ~keep_in & ~np.isnan(cv_in)
    values = np.where(gone, cv_in, 0.0)
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
    # a padded conv: the borders see zero padding, so the correction is a (1, O, Ho, Wo) map
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


def shrink_weight_op(
    op: WeightOp, x: relax.Expr, keep_out: np.ndarray | None, keep_in: np.ndarray | None
) -> relax.Expr:
    """``op`` reading the shrunk ``x``, its weight sliced to the kept output and input channels
    (``None``: all kept)."""
    call = op.call
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
