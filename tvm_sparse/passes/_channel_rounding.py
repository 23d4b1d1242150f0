"""Rounding of the kept channel counts to whole SIMD vectors when shrinking channels.

A shrunk dense conv2d / matmul whose output channel count is not a multiple of the SIMD width
leaves a partial vector in every row, so it may keep some zero channels instead: by rule, or
timed at both counts on the device. A depthwise conv always rounds up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from tvm import relax

from ._channel_atoms import ChannelAtoms, WeightOp, static_shape

#: ``round_up(op, kept, wanted, kept_in)``: why ``op`` keeps zero output channels up to
#: ``wanted`` rather than shrinking to ``kept`` (it reads ``kept_in`` inputs), or ``None``.
RoundUp = Callable[[WeightOp, int, int, int], "str | None"]


def round_to_multiple(
    graph: ChannelAtoms, removed: set[int], multiple: int, round_up: RoundUp
) -> dict[int, str]:
    """Removed classes to keep so that output channel counts are multiples of ``multiple``,
    for the ops where ``round_up`` says so, and always for depthwise convs: their schedule
    vectorises over channels, and a count that is not a whole number of vectors runs in
    narrower vectors or scalars, for far more time than the few zero channels cost."""
    extra: dict[int, str] = {}
    for op in graph.weight_ops.values():
        if op.kind not in ("conv2d", "matmul", "depthwise"):
            continue
        roots = graph.uf.roots(graph.chan[op.var].ids).ravel()
        gone = np.isin(roots, list(removed))
        kept, total = int((~gone).sum()), roots.size
        wanted = -(-kept // multiple) * multiple
        if not gone.any() or kept == wanted or wanted > total:
            continue
        if op.kind == "depthwise":
            reason = (f"kept so that the depthwise {graph.name_of(op.var)} has {wanted} "
                      f"channels, whole vectors of {multiple} (the SIMD width) as its "
                      "schedule needs")  # fmt: skip
        else:
            reason = round_up(op, kept, wanted, _kept_inputs(graph, op, removed))
        if reason is None:
            continue
        for root in list(dict.fromkeys(roots[gone].tolist()))[: wanted - kept]:
            extra[root] = reason
    return extra


def _kept_inputs(graph: ChannelAtoms, op: WeightOp, removed: set[int]) -> int:
    """How many input channels ``op`` reads once ``removed`` is gone."""
    full = op.weight.shape[1]
    c, keep = graph.chan.get(op.x), graph.keep_mask(op.x, removed)
    shape = static_shape(op.x)
    if c is None or keep is None or shape is None:
        return full
    axis = 1 if op.kind == "conv2d" else len(shape) - 1
    if axis not in c.axes:
        return full
    i = c.axes.index(axis)
    return int(keep.any(axis=tuple(j for j in range(keep.ndim) if j != i)).sum())


class LayerRounding:
    """Whether a shrunk layer keeps zero channels up to a multiple of the SIMD width: timed on
    the layer timer's device (memoised: the graph asks again each time its removals change),
    by rule (rounded up) without a timer or once it cannot answer. A :data:`RoundUp`."""

    def __init__(self, graph: ChannelAtoms, multiple: int, timer: Any) -> None:
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
        name = self.graph.name_of(op.var)
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
