"""CPU schedule for row reductions: softmax, layer norm, mean, sum, and their fused epilogues.

Functions whose blocks all share leading spatial axes and reduce over the trailing ones go to
dlight's CPU ``Reduction`` (parallel rows, every block computed per row, vectorised injective
blocks, unrolled reductions). A lone reduction block (``sum``, ``max``) that it declines is given
parallel rows and an unrolled inner reduction here, with any injective epilogue per row.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.cpu import Reduction as _DlightReduction
from tvm.s_tir.dlight.gpu.matmul import auto_inline_consumer_chain
from tvm.target import Target

from .base import CPUScheduleRule, NotApplicable, block_loop_kinds, is_reduction_block, vector_lanes
from .fallback import FallbackKnobs, schedule_reduction_block

__all__ = ["Reduction", "ReductionKnobs"]


@dataclass
class ReductionKnobs:
    """Knobs of :class:`Reduction`.

    Attributes
    ----------
    vector_lanes : int
        Lanes of the vectorised injective blocks (dlight derives its own from the target).
    unroll : int
        ``pragma_auto_unroll_max_step`` on the inner reduction loop of a lone reduction.
    """

    vector_lanes: int = 16
    unroll: int = 16

    @classmethod
    def for_target(cls, target: Target) -> ReductionKnobs:
        """Defaults for ``target``."""
        return cls(vector_lanes=vector_lanes(target))


class Reduction(CPUScheduleRule):
    """Row reductions: dlight's CPU ``Reduction``, plus lone reduction blocks.

    Parameters
    ----------
    knobs : ReductionKnobs, optional
        Fixed knobs; by default derived from the target with :meth:`ReductionKnobs.for_target`.
    """

    def __init__(self, knobs: ReductionKnobs | None = None):
        self.knobs = knobs
        self._dlight = _DlightReduction()

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        """Try dlight's rule first, then the lone-reduction schedule."""
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        try:
            sch = self._dlight.apply(func, target, tunable)
        except Exception:  # noqa: BLE001 - dlight refusing means "try ours"
            sch = None
        if sch is not None:
            return sch
        return super().apply(func, target, tunable)

    def schedule(self, sch: s_tir.Schedule, target: Target) -> s_tir.Schedule:
        knobs = self.knobs or ReductionKnobs.for_target(target)
        blocks = sch.get_child_blocks(get_root_block(sch))
        reductions = [b for b in blocks if is_reduction_block(sch, b)]
        if len(reductions) != 1:
            raise NotApplicable("expects exactly one reduction block")
        main = reductions[0]
        if len(sch.get(main).reads) != 1:
            raise NotApplicable("reduces more than one operand (matmul-like)")
        kinds = "".join(block_loop_kinds(sch, main))
        n_spatial = len(kinds) - len(kinds.lstrip("S"))
        if set(kinds[n_spatial:]) != {"R"}:
            raise NotApplicable("loops are not spatial then reduction")
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
            acc = sch.cache_write(main, 0, "local")
            auto_inline_consumer_chain(sch, acc)
            sch.reverse_compute_at(acc, rows, preserve_unit_loops=True)
        return sch
