"""CPU schedule for window reductions over the inner spatial axes: max/avg pooling.

Channels-last (NHWC) pooling reduces each window on vectors of channels, in tiles of a few
pixels of one output row, with the padded input of a tile copied inside it. For NCHW:

A pooling block ``out[n, c, y, x] = reduce(pad[n, c, y*s + ry, x*s + rx])`` is computed one
output row per task: its column axis is split into vectors (each lane reduces its own window)
with the window loops outside them. The padded input rows a task reads are copied into a small
buffer right before it, so the padding never makes a round trip through memory and the vector
loop carries no boundary test; the average's division runs on the row from the accumulators.

Before::

    for ax0, ax1, ax2, ax3 in T.grid(1, 64, 114, 114):
        pad_temp[...] = T.if_then_else(..., x[...], -inf)
    for ax0, ax1, ax2, ax3, rv0, rv1 in T.grid(1, 64, 56, 56, 3, 3):
        pool_max[...] = T.max(pool_max[...], pad_temp[..., ax2 * 2 + rv0, ax3 * 2 + rv1])

After (schematically)::

    for ax0_ax1_ax2 in T.parallel(64 * 56):          # one output row
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
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.gpu.matmul import auto_inline_consumer_chain
from tvm.target import Target

from .base import (
    TILE_SCOPE,
    CPUScheduleRule,
    NotApplicable,
    block_loop_kinds,
    is_reduction_block,
    loop_extent,
    pick_factor,
    vector_lanes,
)

__all__ = ["Pool", "PoolKnobs"]


@dataclass
class PoolKnobs:
    """Knobs of :class:`Pool`.

    Attributes
    ----------
    vector_lanes : int
        Output columns computed per vector (upper bound; a divisor of the width is preferred).
    """

    vector_lanes: int = 16

    @classmethod
    def for_target(cls, target: Target) -> PoolKnobs:
        """Defaults for ``target``: one fp32 SIMD register."""
        return cls(vector_lanes=vector_lanes(target))


class Pool(CPUScheduleRule):
    """Window reductions whose innermost output axis is spatial (pooling), vectorised over it.

    Parameters
    ----------
    knobs : PoolKnobs, optional
        Fixed knobs; by default derived from the target with :meth:`PoolKnobs.for_target`.
    """

    def __init__(self, knobs: PoolKnobs | None = None):
        self.knobs = knobs

    def schedule(self, sch: s_tir.Schedule, target: Target) -> s_tir.Schedule:
        knobs = self.knobs or PoolKnobs.for_target(target)
        blocks = sch.get_child_blocks(get_root_block(sch))
        reductions = [b for b in blocks if is_reduction_block(sch, b)]
        if len(reductions) != 1:
            raise NotApplicable("expects exactly one reduction block")
        main = reductions[0]
        if len(sch.get(main).reads) != 1:
            raise NotApplicable("reduces more than one operand (matmul-like)")
        kinds = "".join(block_loop_kinds(sch, main))
        n_spatial = len(kinds) - len(kinds.lstrip("S"))
        if not (0 < n_spatial < len(kinds)) or set(kinds[n_spatial:]) != {"R"}:
            raise NotApplicable("loops are not spatial then reduction")
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
        acc = sch.cache_write(main, 0, TILE_SCOPE)
        auto_inline_consumer_chain(sch, acc)
        sch.reverse_compute_at(acc, row, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(acc)[-1])
        for producer in sch.get_producers(main):
            # the padded input rows one output row reads, copied right before it (in L1)
            sch.compute_at(producer, row, preserve_unit_loops=True)
            sch.vectorize(sch.get_loops(producer)[-1])
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
    lanes = knobs.vector_lanes
    while lanes > 1 and channels is not None and channels % lanes:
        lanes //= 2
    if channels is None or lanes < 2 or not outer:
        raise NotApplicable("channels are not whole vectors")
    co, ci = sch.split(c, [None, lanes])
    xo, xi = sch.split(x, [None, pick_factor(loop_extent(sch, x), _PIXELS_PER_TILE)])
    sch.reorder(*outer, xo, xi, co, *windows, ci)
    row = sch.fuse(*outer)
    sch.parallel(row)
    sch.vectorize(ci)
    acc = sch.cache_write(main, 0, TILE_SCOPE)
    auto_inline_consumer_chain(sch, acc)
    sch.reverse_compute_at(acc, xo, preserve_unit_loops=True)
    inner = sch.get_loops(acc)[-1]
    sch.vectorize(sch.split(inner, [None, lanes])[1])
    for producer in sch.get_producers(main):
        sch.compute_at(producer, xo, preserve_unit_loops=True)
        inner = sch.get_loops(producer)[-1]
        sch.vectorize(sch.split(inner, [None, lanes])[1])
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
