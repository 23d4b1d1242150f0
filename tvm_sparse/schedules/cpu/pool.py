"""CPU schedule for window reductions over the inner spatial axes: max/avg pooling.

NCHW: one output row per task, its column axis split into vectors (each lane reduces its own
window) with the window loops outside them. NHWC: one output row per task in tiles of a few
pixels, every window reduced on channel vectors. Either way the padded input a task (or tile)
reads is copied right before it, so the padding never makes a round trip through memory and
the vector loop carries no boundary test; the average's division runs from the accumulators::

    for ax0_ax1_ax2 in T.parallel(64 * 56):          # one output row of a 3x3/2 max pool
        for h, w in T.grid(3, 114):                  # w vectorised
            pad_local[h, w] = T.if_then_else(..., x[...], -inf)
        for ax3o in T.unroll(7):
            acc[ax3o, 0:8] = -inf
            for rv0, rv1 in T.grid(3, 3):
                for ax3i in T.vectorized(8):
                    acc[ax3o, ax3i] = T.max(acc[ax3o, ax3i], pad_local[rv0, ...])
        for ax3 in T.vectorized(56):
            pool_max[...] = acc[...]
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.target import Target

from .base import (
    CPUScheduleRule,
    NotApplicable,
    VectorKnobs,
    find_window_reduction,
    loop_extent,
    pick_factor,
)
from .tiling import accumulate_at, copy_into, vector_width, vectorize_innermost

__all__ = ["Pool", "PoolKnobs"]


@dataclass
class PoolKnobs(VectorKnobs):
    """Knobs of :class:`Pool`; by default one fp32 SIMD register.

    Attributes
    ----------
    vector_lanes : int
        Output columns computed per vector (upper bound; a divisor of the width is preferred).
    """


class Pool(CPUScheduleRule):
    """Window reductions whose innermost output axis is spatial (pooling), vectorised over it."""

    knobs_type = PoolKnobs

    def schedule(self, sch: s_tir.Schedule, target: Target, knobs: PoolKnobs) -> s_tir.Schedule:
        main, n_spatial = find_window_reduction(sch)
        if n_spatial == 0:
            raise NotApplicable("no spatial loops")
        if _channels_last(sch, main, n_spatial):
            return _schedule_channels_last(sch, main, n_spatial, knobs)
        loops = sch.get_loops(main)
        cols = loops[n_spatial - 1]
        width = loop_extent(sch, cols)
        if width is None or width < 2 or n_spatial < 2:
            raise NotApplicable("no static column axis to vectorise within rows")
        vec = _column_vector(width, knobs.vector_lanes)
        if vec < max(knobs.vector_lanes // 4, 2):
            raise NotApplicable("column axis too narrow to vectorise")

        col_o, col_i = sch.split(cols, [None, vec])
        sch.reorder(col_o, *loops[n_spatial:], col_i)
        row = sch.fuse(*loops[: n_spatial - 1])
        sch.parallel(row)
        sch.unroll(col_o)
        sch.vectorize(col_i)
        vectorize_innermost(sch, accumulate_at(sch, main, row))
        for producer in sch.get_producers(main):
            copy_into(sch, producer, row)  # the padded input rows one output row reads, in L1
        sch.decompose_reduction(main, sch.get_loops(main)[1])
        return sch


def _channels_last(sch: s_tir.Schedule, main, n_spatial: int) -> bool:
    """Whether the innermost output axis indexes the innermost input axis alone (NHWC)."""
    stmt = sch.get(main)
    inner = stmt.reads[0].region[-1].min
    return isinstance(inner, tirx.Var) and inner.same_as(stmt.iter_vars[n_spatial - 1].var)


#: Channels-last pooling: output pixels of a row per tile.
_PIXELS_PER_TILE = 8


def _schedule_channels_last(
    sch: s_tir.Schedule, main, n_spatial: int, knobs: PoolKnobs
) -> s_tir.Schedule:
    """NHWC: one output row per task, in tiles of a few pixels, every window reduced on
    channel vectors; the padded input a tile reads is copied into a small buffer inside it."""
    loops = sch.get_loops(main)
    *outer, x, c = loops[:n_spatial]
    windows = loops[n_spatial:]
    channels = loop_extent(sch, c)
    lanes = vector_width(channels, knobs.vector_lanes)
    if channels is None or lanes < 2 or not outer:
        raise NotApplicable("channels are not whole vectors")
    co, ci = sch.split(c, [None, lanes])
    xo, xi = sch.split(x, [None, pick_factor(loop_extent(sch, x), _PIXELS_PER_TILE)])
    sch.reorder(*outer, xo, xi, co, *windows, ci)
    row = sch.fuse(*outer)
    sch.parallel(row)
    sch.vectorize(ci)
    vectorize_innermost(sch, accumulate_at(sch, main, xo), lanes)
    for producer in sch.get_producers(main):
        copy_into(sch, producer, xo, lanes)
    sch.decompose_reduction(main, windows[0])
    return sch


def _column_vector(width: int, lanes: int) -> int:
    """Output columns per vector: the widest power of two up to ``lanes`` that divides the
    width (odd widths such as 14 lower poorly in LLVM), else the widest divisor."""
    if width <= lanes:
        return width
    pow2 = next((v for v in (lanes, lanes // 2, lanes // 4) if v > 1 and width % v == 0), None)
    if pow2 is not None:
        return pow2
    return next((v for v in range(lanes, 1, -1) if width % v == 0), lanes)
