"""CPU schedule for functions with no reduction: elementwise, broadcast, reshape, transpose,
concat, split, and chains of them (GELU with erf, tanh, residual adds).

The blocks are inlined into as few as possible (one per output), and each remaining block gets
a parallel outer loop and a vectorised inner loop::

    for i_jo in T.parallel(24576):               # a 128 x 3072 multiply, then erf
        for ji in T.vectorized(16):
            with T.sblock("compute"): ...        # multiply inlined
"""

from __future__ import annotations

from tvm import s_tir
from tvm.s_tir.dlight.analysis import get_root_block, get_sblock_info
from tvm.s_tir.dlight.base import try_inline
from tvm.target import Target

from .base import CPUScheduleRule, NotApplicable, is_reduction_block
from .fallback import FallbackKnobs, schedule_spatial_block

__all__ = ["Injective", "InjectiveKnobs"]


class InjectiveKnobs(FallbackKnobs):
    """Knobs of :class:`Injective`: those of :class:`FallbackKnobs` (vector lanes)."""


class Injective(CPUScheduleRule):
    """Functions made only of spatial blocks: inline, then parallel + vectorise each output."""

    knobs_type = InjectiveKnobs

    def schedule(
        self, sch: s_tir.Schedule, target: Target, knobs: InjectiveKnobs
    ) -> s_tir.Schedule:
        blocks = sch.get_child_blocks(get_root_block(sch))
        if not blocks or any(is_reduction_block(sch, b) for b in blocks):
            raise NotApplicable("has a reduction")
        infos = [get_sblock_info(sch, b) for b in blocks]
        remaining = try_inline(sch, infos) if len(infos) > 1 else infos
        for info in remaining:
            schedule_spatial_block(sch, info.block_rv, knobs)
        return sch
