"""CPU schedule for window reductions over the inner spatial axes: max/avg pooling.

A pooling block ``out[n, c, y, x] = reduce(pad[n, c, y*s + ry, x*s + rx])`` keeps its output
column axis innermost and spatial, so the window loops move outside a vectorised column loop and
each lane reduces its own window. The padding stage is materialised once (parallel, vectorised),
keeping boundary tests out of the vector loop; the average's division runs per tile from the
accumulators.

Before::

    for ax0, ax1, ax2, ax3, rv0, rv1 in T.grid(1, 64, 56, 56, 3, 3):
        pool_max[...] = T.max(pool_max[...], pad_temp[..., ax2 * 2 + rv0, ax3 * 2 + rv1])

After (schematically)::

    for ax0_ax1_ax2_ax3o in T.parallel(...):
        acc[0:v] = -inf                          # vectorised
        for rv0, rv1 in T.grid(3, 3):
            for ax3i in T.vectorized(v):
                acc[ax3i] = T.max(acc[ax3i], pad_temp[...])
        for ax3i in T.vectorized(v):
            pool_max[...] = acc[ax3i]
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.gpu.matmul import auto_inline_consumer_chain
from tvm.target import Target

from .base import (
    CPUScheduleRule,
    NotApplicable,
    block_loop_kinds,
    is_reduction_block,
    loop_extent,
    vector_lanes,
)
from .fallback import FallbackKnobs, schedule_spatial_block

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
        loops = sch.get_loops(main)
        cols = loops[n_spatial - 1]
        width = loop_extent(sch, cols)
        if width is None or width < 2:
            raise NotApplicable("no static column axis to vectorise")
        if width <= knobs.vector_lanes:
            vec = width
        else:
            vec = next(
                (v for v in range(knobs.vector_lanes, 1, -1) if width % v == 0),
                knobs.vector_lanes,
            )
        if vec < max(knobs.vector_lanes // 4, 2):
            raise NotApplicable("column axis too narrow to vectorise")

        for producer in sch.get_producers(main):
            schedule_spatial_block(sch, producer, FallbackKnobs(vector_lanes=knobs.vector_lanes))

        col_o, col_i = sch.split(cols, [None, vec])
        sch.reorder(col_o, *loops[n_spatial:], col_i)
        tile = sch.fuse(*loops[: n_spatial - 1], col_o)
        sch.parallel(tile)
        sch.vectorize(col_i)
        acc = sch.cache_write(main, 0, "local")
        auto_inline_consumer_chain(sch, acc)
        sch.reverse_compute_at(acc, tile, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(acc)[-1])
        sch.decompose_reduction(main, sch.get_loops(main)[1])
        return sch
