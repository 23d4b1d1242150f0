"""Channel rules of elementwise ops: activations, clip (ReLU6, hard sigmoid / swish), bias add,
batch-norm arithmetic, residual add, gating multiply and ``broadcast_to``.

Each keeps its input's channel atoms and evaluates the per-channel constants with NumPy; a
binary op of two tensors with atoms couples them into one class.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax

from ._channel_atoms import Chan, ChannelAtoms, const_value, static_shape
from ._numpy_ops import BINARY, EXACT_UNARY

#: Elementwise unary ops that keep channels, with their numpy reference for constant folding.
_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relax.nn.relu": lambda v: np.maximum(v, 0.0),
    "relax.nn.relu6": lambda v: np.clip(v, 0.0, 6.0),
    "relax.nn.gelu": lambda v: 0.5 * v * (1.0 + np.vectorize(math.erf)(v / math.sqrt(2.0))),
    "relax.nn.gelu_tanh": lambda v: (
        0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))
    ),
    "relax.nn.silu": lambda v: v / (1.0 + np.exp(-v)),
    "relax.sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)),
    "relax.tanh": np.tanh,
    "relax.exp": np.exp,
    **EXACT_UNARY,
    "relax.astype": lambda v: v,
    "relax.nn.dropout": lambda v: v,
}


def _visit_unary(graph: ChannelAtoms, var: relax.Var, call: relax.Call) -> bool:
    xc = graph.chan_of(call.args[0]) if call.args else None
    if xc is None or len(call.args) != 1:
        return False
    graph.chan[var] = xc.copy_with(cv=_UNARY[call.op.name](xc.cv), rows_sum_to_one=False)
    return True


def _visit_clip(graph: ChannelAtoms, var: relax.Var, call: relax.Call) -> bool:
    # ReLU6 and the hard sigmoid / swish that frontends write with it
    xc = graph.chan_of(call.args[0]) if call.args else None
    if xc is None or len(call.args) != 3:
        return False
    low, high = (_scalar(a) for a in call.args[1:])
    graph.chan[var] = xc.copy_with(cv=np.clip(xc.cv, low, high), rows_sum_to_one=False)
    return True


def _visit_binary(graph: ChannelAtoms, var: relax.Var, call: relax.Call) -> bool:
    if len(call.args) != 2:
        return False
    op = call.op.name
    a, b = call.args
    fn = BINARY[op]
    ca, cb = graph.chan_of(a), graph.chan_of(b)
    out_shape = static_shape(var)
    if ca is not None and cb is not None:
        # equal shapes, or one broadcast over the other's non-channel axes (the gate of a
        # squeeze-excitation block: N x C x 1 x 1 times N x C x H x W)
        shapes = (static_shape(a), static_shape(b), out_shape)
        same_rank = None not in shapes and len({len(sh) for sh in shapes}) == 1
        if (
            same_rank
            and ca.axes == cb.axes
            and all(len({sh[ax] for sh in shapes}) == 1 for ax in ca.axes)
        ):
            graph.uf.union(ca.ids, cb.ids)
            known_a, known_b = ~np.isnan(ca.cv), ~np.isnan(cb.cv)
            graph.residual_hints.append(
                (
                    ca.ids[known_a != known_b],
                    f"channels coupled through {op} ({graph.name_of(var)}) to a branch "
                    "that is not zero",
                )
            )
            graph.chan[var] = Chan(ca.axes, ca.ids, fn(ca.cv, cb.cv))
            return True
        return False
    if ca is None and cb is None:
        return False
    tensor, other, tensor_first = (a, b, True) if ca is not None else (b, a, False)
    tc = ca if ca is not None else cb
    if static_shape(tensor) != out_shape:
        return False
    const = const_value(other)
    if const is not None:
        per_channel = _per_channel(const, out_shape, tc.axes)
        if per_channel is False:
            return False
        if per_channel is None:
            cv = np.full_like(tc.cv, np.nan)
        else:
            cv = fn(tc.cv, per_channel) if tensor_first else fn(per_channel, tc.cv)
        graph.chan[var] = Chan(tc.axes, tc.ids, cv)
        return True
    # A tensor without atoms on the channel axes (a broadcast scalar) keeps channels.
    other_shape = static_shape(other)
    if other_shape is None or len(other_shape) > len(out_shape):
        return False
    lead = len(out_shape) - len(other_shape)
    if any(ax >= lead and other_shape[ax - lead] != 1 for ax in tc.axes):
        return False
    graph.pin_var(other, f"used by {op} ({graph.name_of(var)})")
    graph.chan[var] = Chan(tc.axes, tc.ids, np.full_like(tc.cv, np.nan))
    return True


def _visit_broadcast_to(graph: ChannelAtoms, var: relax.Var, call: relax.Call) -> bool:
    x = call.args[0]
    xc = graph.chan_of(x)
    if xc is None or static_shape(var) != static_shape(x):
        return False
    graph.chan[var] = xc
    return True


def _per_channel(const: np.ndarray, out_shape, axes) -> np.ndarray | None | bool:
    """Per-channel values of a broadcast constant; None if it varies elsewhere; False if bad."""
    ndim = len(out_shape)
    if const.ndim > ndim:
        return False
    full = const.reshape((1,) * (ndim - const.ndim) + const.shape)
    for ax in range(ndim):
        if full.shape[ax] not in (1, out_shape[ax]):
            return False
    other = tuple(ax for ax in range(ndim) if ax not in axes and full.shape[ax] > 1)
    if other:
        lo, hi = full.min(axis=other, keepdims=True), full.max(axis=other, keepdims=True)
        if not np.array_equal(lo, hi):
            return None
        full = lo
    reduced = full.reshape([full.shape[ax] for ax in axes]) if full.ndim else full
    dims = [out_shape[ax] for ax in axes]
    return np.broadcast_to(reduced.astype(np.float64), dims)


def _scalar(arg: relax.Expr | tvm.tirx.PrimExpr) -> float:
    """A clip bound: an immediate (``FloatImm``), or a ``PrimValue`` holding one."""
    value = arg.value
    return float(value if isinstance(value, int | float) else value.value)


RULES = {
    **dict.fromkeys(_UNARY, _visit_unary),
    "relax.clip": _visit_clip,
    **dict.fromkeys(BINARY, _visit_binary),
    "relax.broadcast_to": _visit_broadcast_to,
}
