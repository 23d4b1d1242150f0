"""CPU schedule for row reductions: softmax, layer norm, mean, sum, and their fused epilogues.

Functions whose blocks all share leading spatial axes and reduce over the trailing ones are
computed row by row: parallel rows, injective blocks vectorised, and each reduction over whole
SIMD registers split into one partial result per lane (``rfactor``), summed across the lanes at
the end (a serial reduction is a chain of dependent adds, one per element). What that does not
fit goes to dlight's CPU ``Reduction`` (unrolled serial reductions); a lone reduction block
(``sum``, ``max``) that it declines gets parallel rows and an unrolled inner reduction::

    for i in T.parallel(128):                    # a layer norm over 768
        for ko in range(48):
            for lane in T.vectorized(16): sum_rf[lane] += x[i, ko * 16 + lane]
        for lane in T.unroll(16): sum[i] += sum_rf[lane]
        for ko in range(48):
            for lane in T.vectorized(16): out[i, ko * 16 + lane] = ...
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.cpu import Reduction as _DlightReduction
from tvm.s_tir.dlight.gpu.matmul import auto_inline_consumer_chain
from tvm.s_tir.schedule import SBlockRV
from tvm.target import Target

from .base import CPUScheduleRule, VectorKnobs, find_window_reduction, leading_spatial, loop_extent
from .fallback import FallbackKnobs, schedule_reduction_block
from .tiling import accumulate_at

__all__ = ["Reduction", "ReductionKnobs"]


@dataclass
class ReductionKnobs(VectorKnobs):
    """Knobs of :class:`Reduction`.

    Attributes
    ----------
    vector_lanes : int
        Lanes of the vectorised injective blocks (dlight derives its own from the target).
    unroll : int
        ``pragma_auto_unroll_max_step`` on the inner reduction loop of a lone reduction.
    """

    unroll: int = 16


class Reduction(CPUScheduleRule):
    """Row reductions: dlight's CPU ``Reduction``, plus lone reduction blocks."""

    knobs_type = ReductionKnobs

    def __init__(self, knobs: ReductionKnobs | None = None):
        super().__init__(knobs)
        self._dlight = _DlightReduction()

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        """Try vectorised rows first, then dlight's rule, then the lone-reduction schedule."""
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        knobs = self.knobs_for(target)
        try:
            sch = _vectorized_rows(s_tir.Schedule(func), knobs.vector_lanes)
        except Exception:  # noqa: BLE001 - a refused primitive means "try dlight's"
            sch = None
        if sch is not None:
            return sch
        try:
            sch = self._dlight.apply(func, target, tunable)
        except Exception:  # noqa: BLE001 - dlight refusing means "try ours"
            sch = None
        if sch is not None:
            return sch
        return super().apply(func, target, tunable)

    def schedule(
        self, sch: s_tir.Schedule, target: Target, knobs: ReductionKnobs
    ) -> s_tir.Schedule:
        main, n_spatial = find_window_reduction(sch)
        for producer in sch.get_producers(main):
            sch.compute_inline(producer)
        fb = FallbackKnobs(vector_lanes=knobs.vector_lanes, unroll=knobs.unroll)
        if n_spatial == 0:
            schedule_reduction_block(sch, main, fb)  # a full reduction to a scalar stays serial
            auto_inline_consumer_chain(sch, main)
            return sch
        loops = sch.get_loops(main)
        rows = sch.fuse(*loops[:n_spatial]) if n_spatial > 1 else loops[0]
        sch.parallel(rows)
        inner = sch.get_loops(main)[-1]
        sch.annotate(inner, "pragma_auto_unroll_max_step", knobs.unroll)
        sch.annotate(inner, "pragma_unroll_explicit", 1)
        consumers = sch.get_consumers(main)
        if consumers:
            accumulate_at(sch, main, rows)
        return sch


def _vectorized_rows(sch: s_tir.Schedule, lanes: int) -> s_tir.Schedule | None:
    """Row by row, reductions over whole registers factored into per-lane partial results.

    ``None`` when the function is not a chain of row blocks with at least one reduction that
    can be vectorised (extent a multiple of ``lanes``, at least two registers).
    """
    infos = normalize_prim_func(sch)
    if infos is None or len(infos) < 2 or not infos[-1].is_injective():
        return None
    kinds = [bi.dom_kind() for bi in infos]
    n_spatial = min(leading_spatial(k) for k in kinds)
    if not n_spatial or all(bi.is_injective() for bi in infos):
        return None
    blocks: list[tuple[SBlockRV, str]] = []  # (block, "S" injective | "RF" partial | "R")
    for info in infos:
        block = info.block_rv
        if info.is_injective():
            blocks.append((block, "S"))
            continue
        if set(info.dom_kind()[n_spatial:]) != {"R"}:
            return None
        inner = sch.get_loops(block)[-1]
        extent = loop_extent(sch, inner)
        if extent is None or extent % lanes or extent < 2 * lanes:
            blocks.append((block, "R"))
            continue
        _, lane = sch.split(inner, [None, lanes])
        # the lane becomes the innermost dimension of the partial-result buffer
        partial = sch.rfactor(lane, len(sch.get(block).writes[0].region))
        blocks += [(partial, "RF"), (block, "R")]
    if not any(kind == "RF" for _, kind in blocks):
        return None
    loops = sch.get_loops(blocks[-1][0])
    rows = sch.fuse(*loops[:n_spatial]) if n_spatial > 1 else loops[0]
    sch.parallel(rows)
    for block, _ in reversed(blocks[:-1]):
        sch.compute_at(block, rows, preserve_unit_loops=True)
    for block, kind in blocks:
        loops = sch.get_loops(block)[1:]
        if kind == "RF":
            # compute_at orders the loops as the block's iterators: lane first, then the rest
            lane, outer = loops[0], loops[-1]
            sch.reorder(outer, lane)
            sch.vectorize(lane)
            sch.decompose_reduction(block, outer)
        elif kind == "R":
            sch.annotate(loops[-1], "pragma_auto_unroll_max_step", lanes)
            sch.annotate(loops[-1], "pragma_unroll_explicit", 1)
        elif loops:
            extent = loop_extent(sch, loops[-1])
            if extent is not None and extent > lanes and extent % lanes == 0:
                sch.vectorize(sch.split(loops[-1], [None, lanes])[1])
            elif extent is not None and 2 <= extent <= lanes:
                sch.vectorize(loops[-1])
    return sch
