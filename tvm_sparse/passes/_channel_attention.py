"""Channel rules of attention written as ``softmax(Q K^T) V``: softmax and the matmul of two
activations.

A head is the unit of removal: every atom of Q, K and V at one head is one class, so the
contracted channels go only with the whole head. Softmax rows sum to one, so ``P V`` keeps V's
per-channel constants.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ._channel_atoms import Chan, ChannelAtoms, static_shape


def _visit_softmax(graph: ChannelAtoms, var: relax.Var, call: relax.Call) -> bool:
    x = call.args[0]
    xc = graph.chan_of(x)
    if xc is None:
        return False
    shape = static_shape(x)
    axis = int(call.attrs.axis) % len(shape)
    if axis in xc.axes:
        return False
    graph.chan[var] = xc.copy_with(
        cv=np.full_like(xc.cv, np.nan), rows_sum_to_one=axis == len(shape) - 1
    )
    return True


def _visit_batched_matmul(graph: ChannelAtoms, var: relax.Var, call: relax.Call) -> bool:
    if len(call.args) != 2:
        return False
    a, b = call.args
    if not (isinstance(a, relax.Var) and isinstance(b, relax.Var)):
        return False
    ca, cb = graph.chan.get(a), graph.chan.get(b)
    sa, sb, so = static_shape(a), static_shape(b), static_shape(var)
    if ca is None or cb is None or sa is None or sb is None:
        return False
    r = len(sa)
    if len(sb) != r or len(so) != r or sa[:-2] != sb[:-2]:
        return False
    batch_a = tuple(ax for ax in ca.axes if ax < r - 2)
    batch_b = tuple(ax for ax in cb.axes if ax < r - 2)
    if batch_a != batch_b or len(batch_a) > 1:
        return False
    if r - 2 in ca.axes:
        return False  # an atom on a row of A
    if not batch_a:
        if r - 1 in ca.axes or r - 2 in cb.axes or not cb.axes:
            return False  # a contracted atom without a head to remove it with
        cv = cb.cv if ca.rows_sum_to_one else np.full_like(cb.cv, np.nan)
        graph.chan[var] = Chan(cb.axes, cb.ids, cv)
        return True
    # Per head: everything of A and B at that head is one class (so contracted atoms go
    # only with the whole head).
    h = batch_a[0]
    ia, ib = ca.axes.index(h), cb.axes.index(h)
    for k in range(ca.ids.shape[ia]):
        group = np.concatenate(
            [np.take(ca.ids, k, axis=ia).ravel(), np.take(cb.ids, k, axis=ib).ravel()]
        )
        graph.uf.union(group[:-1], group[1:])
    ids, cv = cb.ids, cb.cv
    if r - 2 in cb.axes:
        j = cb.axes.index(r - 2)
        ids, cv = np.take(ids, 0, axis=j), np.full(np.take(cv, 0, axis=j).shape, np.nan)
    elif not ca.rows_sum_to_one:
        cv = np.full_like(cv, np.nan)
    axes = tuple(ax for ax in cb.axes if ax != r - 2)
    graph.chan[var] = Chan(axes, ids, cv)
    return True


RULES = {
    "relax.nn.softmax": _visit_softmax,
    "relax.matmul": _visit_batched_matmul,
}
