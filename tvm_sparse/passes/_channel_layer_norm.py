"""LayerNorm over the channel axis when shrinking channels: its channel rule, and the rewrite
that normalises over the kept channels with the removed ones' constants still counted.

A channel may leave a LayerNorm only when it is a known constant at the input: its value still
counts in the mean and variance, which the rewrite keeps exact.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tvm import relax

from ._channel_atoms import Chan, ChannelAtoms, const_value, static_shape


def _visit_layer_norm(graph: ChannelAtoms, var: relax.Var, call: relax.Call) -> bool:
    """A removed channel's output is then ``beta`` where ``gamma`` is zero, else unknown."""
    xc = graph.chan_of(call.args[0])
    if xc is None:
        return False
    x, gamma, beta = call.args
    shape = static_shape(x)
    if shape is None or None in shape:
        return False
    last = len(shape) - 1
    axes = [int(a) % len(shape) for a in call.attrs.axes]
    gamma = const_value(gamma)
    beta = const_value(beta)
    if axes != [last] or xc.axes != (last,) or gamma is None or beta is None:
        return False
    gamma = np.broadcast_to(gamma if call.attrs.scale else 1.0, (shape[last],))
    beta = np.broadcast_to(beta if call.attrs.center else 0.0, (shape[last],))
    unknown = np.isnan(xc.cv)
    if unknown.any():
        graph.pins.append((xc.ids[unknown], f"read by the statistics of {graph.name_of(var)}"))
    cv = np.where(gamma == 0, beta.astype(np.float64), np.nan)
    graph.chan[var] = Chan(xc.axes, xc.ids, cv)
    return True


RULES = {"relax.nn.layer_norm": _visit_layer_norm}


def shrink_layer_norm(
    call: relax.Call,
    x: relax.Expr,
    keep: np.ndarray,
    removed_consts: np.ndarray,
    emit: Callable[[relax.Expr, str], relax.Var],
) -> relax.Expr:
    """LayerNorm ``call`` over the kept channels ``x``, with the removed ones' constants still
    counted: ``D`` channels of which ``R`` removed hold ``c``, so with ``d = x - mean`` over the
    kept ones, ``mean = (sum(x) + sum(c)) / D`` and
    ``var = (sum(d^2) + R mean^2 - 2 mean sum(c) + sum(c^2)) / D``. ``emit(expr, suffix)`` binds
    an intermediate to a new variable named with ``suffix``."""
    attrs = call.attrs
    dtype = str(call.args[0].ty.dtype)
    size, removed = keep.size, int((~keep).sum())
    s1, s2 = float(removed_consts.sum()), float((removed_consts * removed_consts).sum())

    def const(v) -> relax.Expr:
        return relax.const(np.asarray(v, dtype=dtype))

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
    gamma, beta = (const_value(a) for a in call.args[1:])
    if attrs.scale:
        out = relax.op.multiply(out, const(np.broadcast_to(gamma, keep.shape)[keep]))
    if attrs.center:
        out = relax.op.add(out, const(np.broadcast_to(beta, keep.shape)[keep]))
    return out
