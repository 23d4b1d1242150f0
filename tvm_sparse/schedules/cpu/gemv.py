"""CPU schedule for matrix-vector products whose reduction axis is contiguous (``W[n, k] x[k]``).

dlight's CPU ``GEMV`` vectorises a loop that encloses the reduction, which LLVM scalarises, and
leaves the epilogue serial. Here the reduction axis is split into SIMD lanes and ``rfactor``-ed:
each of ``rows`` outputs keeps a vector of partial sums over contiguous ``k``, reduced across
lanes at the end of the row tile, with the epilogue fused::

    for jo in T.parallel(768):                   # 4 rows per tile of y = W[3072, 768] x
        for ko in range(48):
            for ji in T.unroll(4):
                for kv in T.vectorized(16):
                    part[ji, kv] += x[0, ko * 16 + kv] * W[jo * 4 + ji, ko * 16 + kv]
        for ji, kv in T.grid(4, 16): acc[ji] += part[ji, kv]
        for ji in range(4): y[0, jo * 4 + ji] = acc[ji] + bias[jo * 4 + ji]
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tvm import s_tir
from tvm.target import Target

from .base import CPUScheduleRule, NotApplicable, VectorKnobs, loop_extent, pick_factor
from .knob_sampler import KnobSampler
from .matmul_block import ITER_I as _I
from .matmul_block import ITER_J as _J
from .matmul_block import ITER_K as _K
from .matmul_block import ITER_S as _S
from .matmul_block import inline_matmul_prologue, innermost_kind, normalize_matmul
from .tiling import accumulate_at

__all__ = ["GEMV", "GEMVKnobs"]


@dataclass
class GEMVKnobs(VectorKnobs):
    """Knobs of :class:`GEMV`; by default one fp32 SIMD register of partial sums per row.

    Attributes
    ----------
    vector_lanes : int
        Partial sums per output row (the ``k`` split); one SIMD register.
    tile_rows : int
        Output rows per parallel tile (upper bound; a divisor of ``N`` is used).
    """

    tile_rows: int = 4


def _sample_knobs(sampler: KnobSampler, knobs: GEMVKnobs, n: int | None, k: int) -> GEMVKnobs:
    """``knobs`` for ``n`` rows of length ``k`` drawn by ``sampler``: partial sums per row (half to
    four registers of them, dividing ``k``) and rows per tile (dividing ``n``)."""
    base = knobs.vector_lanes
    sums = [v for v in (base // 2, 2 * base, 4 * base) if v >= 4 and k % v == 0]
    lanes = sampler("vector_lanes", base, sums)
    rows = [r for r in (1, 2, 4, 8, 16) if n and n % r == 0]
    return replace(knobs, vector_lanes=lanes, tile_rows=sampler("tile_rows", knobs.tile_rows, rows))


class GEMV(CPUScheduleRule):
    """``y[S, J] = sum_k x[S, k] * W[S, J, k]`` with ``k`` contiguous in ``W`` (batch 1 linear)."""

    knobs_type = GEMVKnobs
    samples_knobs = True

    def schedule(
        self,
        sch: s_tir.Schedule,
        target: Target,
        knobs: GEMVKnobs,
        sampler: KnobSampler | None = None,
    ) -> s_tir.Schedule:
        main, traits, kinds = inline_matmul_prologue(sch)
        if _I in kinds.values():
            raise NotApplicable("more than one row of A: a matmul")
        if innermost_kind(sch.get(main).reads[1].region, kinds) != _K:
            raise NotApplicable("reduction axis of the matrix is not contiguous")
        k_ext = next(t.extent for t in traits[3] if t.kind == _K)
        lanes = knobs.vector_lanes
        if not hasattr(k_ext, "value") or k_ext.value % lanes != 0:
            raise NotApplicable("reduction length is not a multiple of the vector width")

        reindex_a, reindex_b = normalize_matmul(sch, main, traits, [_S, _K], [_S, _J, _K], [_S, _J])
        sch.compute_inline(reindex_a)
        sch.compute_inline(reindex_b)

        b, j, k = sch.get_loops(main)
        if sampler is not None:
            knobs = _sample_knobs(sampler, knobs, loop_extent(sch, j), k_ext.value)
            lanes = knobs.vector_lanes
        ko, kv = sch.split(k, [None, lanes])
        rows = pick_factor(loop_extent(sch, j), knobs.tile_rows)
        jo, ji = sch.split(j, [None, rows])
        sch.reorder(b, jo, ko, ji, kv)
        tile = sch.fuse(b, jo)
        part = sch.rfactor(kv, factor_axis=0)  # part[kv, s, j]: one vector of sums per row
        # `main` now sums the partials across lanes in its own nest; fold both into one tile.
        tile = sch.get_loops(main)[0]
        sch.parallel(tile)
        sch.compute_at(part, tile, preserve_unit_loops=True)
        _, p_lane, p_batch, p_row, p_k = sch.get_loops(part)  # compute_at rebuilt them
        sch.reorder(p_k, p_batch, p_row, p_lane)
        sch.unroll(p_row)
        sch.vectorize(p_lane)
        accumulate_at(sch, main, tile)
        sch.decompose_reduction(part, p_k)
        return sch
