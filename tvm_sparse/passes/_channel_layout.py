"""Channel rules of ops that move channels between axes or reduce the others: pooling,
reductions, reshape / flatten, ``permute_dims`` and concat.

A reshape keeps a channel as a contiguous run of features (flatten after a conv); concat offsets
the atoms of its inputs along the concatenated axis, or couples them along any other.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ._channel_atoms import Chan, ChannelAtoms, static_shape

#: Ops whose channel atoms pass straight through with the same layout (NCHW axis 1 kept).
_POOL = {"relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d"}
_REDUCE = {"relax.mean", "relax.sum", "relax.max", "relax.min"}
#: Most atoms a reshape spreads its channels over before it pins them instead.
MAX_ATOMS = 1 << 22


def _visit_pool(graph: ChannelAtoms, var: relax.Var, call: relax.Call) -> bool:
    xc = graph.chan_of(call.args[0])
    if xc is None or xc.axes != (1,):
        return False
    if call.attrs.layout != "NCHW" or (call.attrs.out_layout or "NCHW") != "NCHW":
        return False
    cv = xc.cv
    if call.op.name == "relax.nn.avg_pool2d" and any(int(p) for p in call.attrs.padding):
        if call.attrs.count_include_pad:
            cv = np.full_like(cv, np.nan)
    graph.chan[var] = xc.copy_with(cv=cv, rows_sum_to_one=False)
    return True


def _visit_reduce(graph: ChannelAtoms, var: relax.Var, call: relax.Call) -> bool:
    xc = graph.chan_of(call.args[0])
    if xc is None:
        return False
    shape = static_shape(call.args[0])
    ndim = len(shape)
    axes = call.attrs.axis
    if axes is None:
        return False
    axes = sorted(int(a) % ndim for a in axes)
    if set(axes) & set(xc.axes) or any(shape[a] is None for a in axes):
        return False
    keep = bool(call.attrs.keepdims)
    new_axes = tuple(a if keep else a - sum(r < a for r in axes) for a in xc.axes)
    cv = xc.cv
    if call.op.name == "relax.sum":
        cv = cv * float(np.prod([shape[a] for a in axes]))
    graph.chan[var] = Chan(new_axes, xc.ids, cv)
    return True


def _visit_permute(graph: ChannelAtoms, var: relax.Var, call: relax.Call) -> bool:
    if isinstance(call.args[0], tvm.ir.GenericConst):
        return True  # a weight transposition; only its matmul consumes it
    xc = graph.chan_of(call.args[0])
    if xc is None:
        return False
    ndim = len(static_shape(call.args[0]))
    perm = list(range(ndim))[::-1] if call.attrs.axes is None else list(call.attrs.axes)
    perm = [int(p) % ndim for p in perm]
    new_axes = tuple(j for j in range(ndim) if perm[j] in xc.axes)
    order = [xc.axes.index(perm[j]) for j in new_axes]
    graph.chan[var] = Chan(new_axes, xc.ids.transpose(order), xc.cv.transpose(order))
    return True


def _visit_reshape(graph: ChannelAtoms, var: relax.Var, call: relax.Call) -> bool:
    x = call.args[0]
    xc = graph.chan_of(x)
    if xc is None:
        return False
    src, dst = static_shape(x), static_shape(var)
    if src is None or dst is None:
        return False
    groups = _reshape_groups(src, dst)
    if groups is None:
        return False
    chan_groups = [(i, o) for i, o in groups if set(i) & set(xc.axes)]
    in_axes = [a for i, _ in chan_groups for a in i]
    out_axes = tuple(a for _, o in chan_groups for a in o)
    if any(src[a] is None for a in in_axes):
        return False
    full = [src[a] for a in in_axes]
    if int(np.prod(full, dtype=np.int64)) > MAX_ATOMS:
        return False
    view = [src[a] if a in xc.axes else 1 for a in in_axes]
    out_dims = [dst[a] for a in out_axes]
    ids = np.broadcast_to(xc.ids.reshape(view), full).reshape(out_dims)
    cv = np.broadcast_to(xc.cv.reshape(view), full).reshape(out_dims)
    # A size-1 axis never loses channels on its own: drop it from the layout.
    unit = tuple(i for i, d in enumerate(out_dims) if d == 1)
    out_axes = tuple(a for i, a in enumerate(out_axes) if i not in unit)
    graph.chan[var] = Chan(out_axes, ids.squeeze(unit), cv.squeeze(unit))
    return True


def _visit_concat(graph: ChannelAtoms, var: relax.Var, call: relax.Call) -> bool:
    fields = call.args[0]
    if isinstance(fields, relax.Var):
        fields = graph.values.get(fields)
    if not isinstance(fields, relax.Tuple):
        return False
    chans = [graph.chan_of(f) for f in fields.fields]
    if any(c is None for c in chans) or len({c.axes for c in chans}) != 1:
        return False
    ndim = len(static_shape(var))
    axis = int(call.attrs.axis) % ndim
    axes = chans[0].axes
    if axis in axes:
        k = axes.index(axis)
        ids = np.concatenate([c.ids for c in chans], axis=k)
        cv = np.concatenate([c.cv for c in chans], axis=k)
        graph.chan[var] = Chan(axes, ids, cv)
        return True
    if len({c.ids.shape for c in chans}) != 1:
        return False
    for c in chans[1:]:
        graph.uf.union(chans[0].ids, c.ids)
    graph.chan[var] = Chan(axes, chans[0].ids, np.full_like(chans[0].cv, np.nan))
    return True


def _reshape_groups(src, dst):
    """Pair contiguous runs of source and target axes with equal products."""
    groups = []
    i = j = 0
    while i < len(src) or j < len(dst):
        gi, gj = [], []
        pi = pj = 1
        if i < len(src):
            gi.append(i)
            pi = src[i]
            i += 1
        if j < len(dst):
            gj.append(j)
            pj = dst[j]
            j += 1
        if pi is None or pj is None:
            if pi is None and pj is None and len(gi) == len(gj) == 1:
                groups.append((tuple(gi), tuple(gj)))
                continue
            return None
        while pi != pj:
            if pi < pj and i < len(src) and src[i] is not None:
                pi *= src[i]
                gi.append(i)
                i += 1
            elif pj < pi and j < len(dst) and dst[j] is not None:
                pj *= dst[j]
                gj.append(j)
                j += 1
            else:
                return None
        # absorb trailing size-1 axes into the same group
        groups.append((tuple(gi), tuple(gj)))
    return groups


RULES = {
    **dict.fromkeys(_POOL, _visit_pool),
    **dict.fromkeys(_REDUCE, _visit_reduce),
    "relax.reshape": _visit_reshape,
    "relax.permute_dims": _visit_permute,
    "relax.concat": _visit_concat,
}
