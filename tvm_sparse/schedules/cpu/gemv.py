"""CPU schedule for matrix-vector products whose reduction axis is contiguous (``W[n, k] x[k]``).

dlight's CPU ``GEMV`` vectorises a loop that encloses the reduction, which LLVM scalarises, and
leaves the epilogue serial (1.5 GFLOP/s for 3072x768 on znver4). Here the reduction axis is split
into SIMD lanes and ``rfactor``-ed: each of ``rows`` outputs keeps a vector of partial sums over
contiguous ``k``, reduced across lanes at the end of the row tile, with the epilogue fused.

Before::

    for i, j, k in T.grid(1, 3072, 768):
        t[i, j] += x[i, k] * W[j, k]
    for i, j in T.grid(1, 3072): y[i, j] = t[i, j] + bias[j]

After (schematically)::

    for jo in T.parallel(768):                   # 4 rows per tile
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
from tvm.s_tir.dlight.gpu.matmul import (
    auto_inline_consumer_chain,
    auto_inline_producers,
    make_iter_fusion_index_map,
)
from tvm.target import Target

from .base import TILE_SCOPE, CPUScheduleRule, NotApplicable, loop_extent, pick_factor, vector_lanes
from .knob_sampler import KnobSampler
from .matmul import (
    _I,
    _J,
    _K,
    _S,
    _innermost_kind,
    _var_kinds,
    detect_iter_traits,
    find_matmul_block,
)

__all__ = ["GEMV", "GEMVKnobs"]


@dataclass
class GEMVKnobs:
    """Knobs of :class:`GEMV`.

    Attributes
    ----------
    vector_lanes : int
        Partial sums per output row (the ``k`` split); one SIMD register.
    tile_rows : int
        Output rows per parallel tile (upper bound; a divisor of ``N`` is used).
    """

    vector_lanes: int = 16
    tile_rows: int = 4

    @classmethod
    def for_target(cls, target: Target) -> GEMVKnobs:
        """Defaults for ``target``: one fp32 SIMD register of partial sums per row."""
        return cls(vector_lanes=vector_lanes(target))


def _sample_knobs(sampler: KnobSampler, knobs: GEMVKnobs, n: int | None, k: int) -> GEMVKnobs:
    """``knobs`` for ``n`` rows of length ``k`` drawn by ``sampler``: partial sums per row (half to
    four registers of them, dividing ``k``) and rows per tile (dividing ``n``)."""
    base = knobs.vector_lanes
    sums = [v for v in (base // 2, 2 * base, 4 * base) if v >= 4 and k % v == 0]
    lanes = sampler("vector_lanes", base, sums)
    rows = [r for r in (1, 2, 4, 8, 16) if n and n % r == 0]
    return replace(knobs, vector_lanes=lanes, tile_rows=sampler("tile_rows", knobs.tile_rows, rows))


class GEMV(CPUScheduleRule):
    """``y[S, J] = sum_k x[S, k] * W[S, J, k]`` with ``k`` contiguous in ``W`` (batch 1 linear).

    Parameters
    ----------
    knobs : GEMVKnobs, optional
        Fixed knobs; by default derived from the target with :meth:`GEMVKnobs.for_target`.
    """

    samples_knobs = True

    def __init__(self, knobs: GEMVKnobs | None = None):
        self.knobs = knobs

    def schedule(
        self, sch: s_tir.Schedule, target: Target, sampler: KnobSampler | None = None
    ) -> s_tir.Schedule:
        knobs = self.knobs or GEMVKnobs.for_target(target)
        main = find_matmul_block(sch)
        auto_inline_producers(sch, main)
        block = sch.get(main)
        traits = detect_iter_traits(block)
        if traits is None:
            raise NotApplicable("not a matmul")
        a_traits, b_traits, c_traits, block_traits = traits
        kinds = _var_kinds(block, block_traits)
        if _I in kinds.values():
            raise NotApplicable("more than one row of A: a matmul")
        if _innermost_kind(block.reads[1].region, kinds) != _K:
            raise NotApplicable("reduction axis of the matrix is not contiguous")
        k_ext = next(t.extent for t in block_traits if t.kind == _K)
        lanes = knobs.vector_lanes
        if not hasattr(k_ext, "value") or k_ext.value % lanes != 0:
            raise NotApplicable("reduction length is not a multiple of the vector width")

        reindex_a = sch.reindex(main, ("read", 0))
        reindex_b = sch.reindex(main, ("read", 1))
        reindex_c = sch.reindex(main, ("write", 0))
        sch.transform_layout(
            reindex_a, ("write", 0), make_iter_fusion_index_map(a_traits, [_S, _K])
        )
        sch.transform_layout(
            reindex_b, ("write", 0), make_iter_fusion_index_map(b_traits, [_S, _J, _K])
        )
        sch.transform_layout(reindex_c, ("read", 0), make_iter_fusion_index_map(c_traits, [_S, _J]))
        sch.transform_block_layout(main, make_iter_fusion_index_map(block_traits, [_S, _J, _K]))
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
        acc = sch.cache_write(main, 0, TILE_SCOPE)
        auto_inline_consumer_chain(sch, acc)
        sch.reverse_compute_at(acc, tile, preserve_unit_loops=True)
        sch.decompose_reduction(part, p_k)
        return sch
