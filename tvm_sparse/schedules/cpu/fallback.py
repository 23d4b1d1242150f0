"""The last-resort CPU rule: parallel outer spatial loops and a vectorised inner loop for anything.

``Fallback`` never declines a PrimFunc on an llvm target. It inlines what can be inlined, then gives
each remaining block a parallel loop over its leading spatial loops; spatial blocks also get a
vectorised innermost loop, and the innermost reduction loop of a reduction block is unrolled.
Every step that the schedule refuses is skipped, so the worst outcome is the function unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block, get_sblock_info
from tvm.s_tir.dlight.base import try_inline
from tvm.s_tir.schedule import SBlockRV
from tvm.target import Target

from .base import (
    CPUScheduleRule,
    VectorKnobs,
    block_loop_kinds,
    is_reduction_block,
    leading_spatial,
    loop_extent,
    vector_lanes,
)

__all__ = ["Fallback", "FallbackKnobs", "schedule_reduction_block", "schedule_spatial_block"]


@dataclass
class FallbackKnobs(VectorKnobs):
    """Knobs of :class:`Fallback` (and of the per-block helpers other rules reuse).

    Attributes
    ----------
    vector_lanes : int
        Widest vector, in elements, to split off the innermost spatial loop.
    min_vector_lanes : int
        Narrowest vector worth splitting off the innermost loop alone; below it the whole spatial
        nest is fused first so that a wider vector divides it.
    unroll : int
        ``pragma_auto_unroll_max_step`` put on the innermost reduction loop (0 disables).
    """

    min_vector_lanes: int = 4
    unroll: int = 16

    @classmethod
    def for_target(cls, target: Target) -> FallbackKnobs:
        """Defaults for ``target``: one fp32 SIMD register wide."""
        lanes = vector_lanes(target)
        return cls(vector_lanes=lanes, min_vector_lanes=min(4, lanes))


def _pow2_factor(extent: int | None, limit: int) -> int:
    """Largest power of two not above ``limit`` that divides ``extent`` (1 when symbolic)."""
    if extent is None:
        return 1
    factor = 1
    while factor * 2 <= limit and extent % (factor * 2) == 0:
        factor *= 2
    return factor


def _try(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception:  # noqa: BLE001 - a refused primitive leaves the schedule unchanged
        return None


def _reads_along(sch: s_tir.Schedule, block: SBlockRV, axis: int) -> bool:
    """Whether some input of ``block`` is indexed, in its innermost dimension, by the block
    iterator ``axis`` alone (the loops of an unscheduled block follow its iterators)."""
    stmt = sch.get(block)
    if len(stmt.iter_vars) != len(sch.get_loops(block)) or len(stmt.iter_vars) < -axis:
        return False
    var = stmt.iter_vars[axis].var
    return any(
        r.region and isinstance(r.region[-1].min, tirx.Var) and r.region[-1].min.same_as(var)
        for r in stmt.reads
    )


def _transposed_axis(sch: s_tir.Schedule, block: SBlockRV) -> int | None:
    """The loop (other than the innermost) along which the input of a one-input block is
    contiguous, when the block is a transpose; ``None`` otherwise."""
    stmt = sch.get(block)
    if len(stmt.reads) != 1 or len(stmt.iter_vars) != len(sch.get_loops(block)):
        return None
    for axis in range(len(stmt.iter_vars) - 1):
        if _reads_along(sch, block, axis - len(stmt.iter_vars)):
            return axis
    return None


def _schedule_transpose(sch: s_tir.Schedule, block: SBlockRV, axis: int, lanes: int) -> bool:
    """Tiles of ``lanes x lanes``: the tile's input is read along ``axis`` into L1 and its
    output written in vectors along the innermost axis (one stride-gather per vector from L1,
    instead of one from memory). ``False`` when the axes are not whole tiles."""
    loops = sch.get_loops(block)
    inner, along = loops[-1], loops[axis]
    if any((loop_extent(sch, loop) or 0) % lanes for loop in (inner, along)):
        return False
    ao, ai = sch.split(along, [None, lanes])
    io, ii = sch.split(inner, [None, lanes])
    others = [loop for i, loop in enumerate(loops[:-1]) if i != axis]
    sch.reorder(*others, ao, io, ai, ii)
    sch.parallel(sch.fuse(*others, ao, io))
    sch.vectorize(ii)
    return True


#: Longest row, in vectors, that a spatial block vectorises whole (LLVM splits it in registers):
#: a 226-pixel row of a padded 3-channel image is 85 AVX2 vectors, which a limit of 64 would
#: send to vectors across rows, each lane dividing its index back into coordinates.
_ROW_VECTOR = 128


def schedule_spatial_block(sch: s_tir.Schedule, block: SBlockRV, knobs: FallbackKnobs) -> None:
    """Parallelise the outer loops of a spatial block and vectorise its innermost loop."""
    loops = sch.get_loops(block)
    if not loops:
        return
    axis = _transposed_axis(sch, block)
    if axis is not None and _schedule_transpose(sch, block, axis, knobs.vector_lanes):
        return
    inner_ext = loop_extent(sch, loops[-1])
    factor = _pow2_factor(inner_ext, knobs.vector_lanes)
    if factor >= knobs.min_vector_lanes:
        outer, vec = sch.split(loops[-1], [None, factor])
        outer_loops = [*loops[:-1], outer]
    elif (
        len(loops) > 1
        and inner_ext is not None
        and knobs.min_vector_lanes <= inner_ext <= 16 * knobs.vector_lanes
    ):
        # a whole row as one vector (LLVM splits it into registers plus a tail): fusing first
        # would vectorise across rows, turning each lane's index into a division and a gather
        vec, outer_loops = loops[-1], loops[:-1]
    elif _reads_along(sch, block, -2) and (loop_extent(sch, loops[-2]) or 0) >= knobs.vector_lanes:
        # a transpose with a short inner axis (NCHW -> NHWC of 3 channels): vectorise the
        # axis the input is contiguous along, storing with a stride, instead of fusing the
        # loops into a vector whose every lane divides its index back into coordinates; the
        # short axis unrolled inside the parallel rows, not one pass over the row per channel
        factor = _pow2_factor(loop_extent(sch, loops[-2]), knobs.vector_lanes)
        outer, vec = sch.split(loops[-2], [None, factor])
        sch.reorder(outer, loops[-1], vec)  # each vector's pixels written whole, one by one
        sch.unroll(loops[-1])
        outer_loops = loops[:-2] or [outer]
    elif (
        len(loops) > 2
        and inner_ext is not None
        and inner_ext < knobs.min_vector_lanes
        and (loop_extent(sch, loops[-2]) or 0) * inner_ext <= _ROW_VECTOR * knobs.vector_lanes
    ):
        # a short inner axis (padding a 3-channel NHWC image): the last two loops as one row
        # vector, whose flattened index stays affine (x * 3 + c), not vectors across rows,
        # whose every lane divides its index back
        vec, outer_loops = sch.fuse(loops[-2], loops[-1]), loops[:-2]
    else:
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        factor = _pow2_factor(loop_extent(sch, fused), knobs.vector_lanes)
        if factor >= 2:
            outer, vec = sch.split(fused, [None, factor])
            outer_loops = [outer]
        else:
            vec, outer_loops = None, [fused]
    par = sch.fuse(*outer_loops) if len(outer_loops) > 1 else outer_loops[0]
    sch.parallel(par)
    if vec is not None:
        sch.vectorize(vec)


def schedule_reduction_block(sch: s_tir.Schedule, block: SBlockRV, knobs: FallbackKnobs) -> None:
    """Parallelise the leading spatial loops of a reduction block and unroll its inner loop."""
    loops = sch.get_loops(block)
    kinds = block_loop_kinds(sch, block)
    n_lead = leading_spatial("".join(kinds))
    if n_lead:
        lead = sch.fuse(*loops[:n_lead]) if n_lead > 1 else loops[0]
        sch.parallel(lead)
    loops = sch.get_loops(block)
    if knobs.unroll and n_lead < len(loops) and kinds[-1] == "R":
        sch.annotate(loops[-1], "pragma_auto_unroll_max_step", knobs.unroll)
        sch.annotate(loops[-1], "pragma_unroll_explicit", 1)


def schedule_any_block(sch: s_tir.Schedule, block: SBlockRV, knobs: FallbackKnobs) -> None:
    """Schedule one root-level block by its kind; a step the schedule refuses is skipped."""
    if is_reduction_block(sch, block):
        _try(schedule_reduction_block, sch, block, knobs)
    else:
        _try(schedule_spatial_block, sch, block, knobs)


class Fallback(CPUScheduleRule):
    """Schedules any PrimFunc: parallel outer spatial loops, vectorised inner spatial loops."""

    knobs_type = FallbackKnobs

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        """Schedule ``func``; only a non-llvm target or a non-PrimFunc gives ``None``."""
        sch = super().apply(func, target, tunable)
        if sch is None and isinstance(func, tirx.PrimFunc) and self.is_target_available(target):
            sch = s_tir.Schedule(func)  # never leave the caller without a schedule
        return sch

    def schedule(self, sch: s_tir.Schedule, target: Target, knobs: FallbackKnobs) -> s_tir.Schedule:
        infos = [get_sblock_info(sch, b) for b in sch.get_child_blocks(get_root_block(sch))]
        remaining = try_inline(sch, infos) if len(infos) > 1 else infos
        for info in remaining:
            schedule_any_block(sch, info.block_rv, knobs)
        return sch
