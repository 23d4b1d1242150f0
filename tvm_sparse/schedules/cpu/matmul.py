"""Register-tiled CPU schedule for matmul-like PrimFuncs (linear, batched matmul, attention).

The main block (any operand layout, any fused injective prologue or epilogue) is normalised with
``reindex`` to ``C[S, I, J] += A[S, I, K] * B[S, K, J]``, then computed in ``mr x nr`` register
tiles: ``mr`` rows of ``A`` broadcast against ``nr`` contiguous columns of ``B`` (a few SIMD
registers). The epilogue runs on each tile from the registers. A ``B`` whose ``J`` axis is not
contiguous (a transposed weight, ``Q @ K^T``) is first copied into ``[S, K, J]`` layout::

    for b_jo_io in T.parallel(1536):             # tiles of 4 x 64 of a 128 x 3072 C
        C_local[0:4, 0:64] = 0
        for k in range(768):
            for ii in T.unroll(4):
                for ji in T.vectorized(64):
                    C_local[ii, ji] += A[..., k] * B[k, ...]
        for ii, ji in T.grid(4, 64):             # ji vectorised, epilogue fused
            D[...] = C_local[ii, ji] + bias[...]
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.schedule import SBlockRV
from tvm.target import Target

from .base import (
    TILE_SCOPE,
    CPUScheduleRule,
    VectorKnobs,
    loop_extent,
    pick_factor,
    vector_lanes,
)
from .fallback import FallbackKnobs, schedule_spatial_block
from .knob_sampler import KnobSampler
from .matmul_block import ITER_I as _I
from .matmul_block import ITER_J as _J
from .matmul_block import ITER_K as _K
from .matmul_block import ITER_S as _S
from .matmul_block import inline_matmul_prologue, innermost_kind, normalize_matmul
from .tiling import pack_weight, vector_width, write_back_at

__all__ = ["Matmul", "MatmulKnobs"]

#: A B operand this small (bytes) is read from L1 by every row tile: the row tiles go outside.
_L1_BYTES = 16 * 1024


def _b_in_l1(k: int | None, n: int | None) -> bool:
    """Whether a ``k x n`` fp32 ``B`` stays in L1 (``_L1_BYTES``)."""
    return k is not None and n is not None and 4 * k * n <= _L1_BYTES


@dataclass
class MatmulKnobs(VectorKnobs):
    """Knobs of :class:`Matmul`.

    Attributes
    ----------
    vector_lanes : int
        fp32 lanes of one SIMD register.
    tile_rows : int
        ``mr``: rows of ``A`` per register tile, an upper bound: ``I``'s largest divisor up to
        it where that is over half of it, else ``mr`` itself with a predicated last tile
        (:func:`_row_tile`).
    tile_vectors : int
        ``nr / vector_lanes``: SIMD registers of ``C`` per tile row.
    k_block : int
        Blocks of the reduction axis (a divisor of ``K`` is used): each tile of ``nr``
        columns then accumulates all rows of ``C`` block by block, so that a ``k_block x nr``
        block of ``B`` stays in L1 while every row tile reads it; 0 keeps the whole ``K`` in
        one loop per register tile.
    unroll_k : int
        ``pragma_auto_unroll_max_step`` on the innermost ``k`` loop (0 disables).
    pack_b : bool
        Read a 2-D ``B`` that is a function parameter (a weight) through a ``[N / nr, K, nr]``
        copy marked as a layout rewrite, which ``PackWeights`` moves to compile time for
        constant weights: each tile then streams one contiguous panel.
    row_tasks : int
        Order of the parallel tiles when ``B`` does not stay in L1 and ``K`` has no blocks:
        1 puts the rows of ``C`` outside (each core reads its share of ``A`` and all of
        ``B``), 0 the column panels (each core reads all of ``A`` and its share of ``B``);
        -1 chooses rows where ``A`` is at least as large as ``B`` (``M >= N``).
    """

    tile_rows: int = 4
    tile_vectors: int = 4
    k_block: int = 0
    unroll_k: int = 0
    pack_b: bool = True
    row_tasks: int = -1

    @classmethod
    def for_target(cls, target: Target) -> MatmulKnobs:
        """Defaults for ``target``: 16-24 accumulator registers of the target's SIMD width."""
        lanes = vector_lanes(target)
        if lanes >= 16:  # AVX-512: 32 zmm registers
            # 8 x 3 registers: 24 accumulators, 3 weight loads per 8 broadcasts, which keeps
            # two FMA units busier than 4 x 4 (and 6 x 4 leaves a row tail)
            return cls(vector_lanes=lanes, tile_rows=8, tile_vectors=3)
        if lanes == 8:  # AVX2: 16 ymm registers
            # 4 x 3 registers: 12 accumulators, 3 weight vectors and a broadcast fill all 16.
            # It tiles MobileNetV2's 24-channel 1x1 convs whole, where 4 x 2 fell back to one
            # vector
            return cls(vector_lanes=lanes, tile_rows=4, tile_vectors=3)
        return cls(vector_lanes=lanes, tile_rows=4, tile_vectors=4)  # NEON: 32 q registers


def _pack_weight_panels(sch: s_tir.Schedule, main: SBlockRV, nr: int) -> None:
    """Read ``B[k, n]`` (a 2-D parameter) as panels ``B[n // nr, k, n % nr]``."""
    read = sch.get(main).reads[1]
    computed = any(
        w.source.same_as(read.source)
        for blk in sch.get_producers(main)
        for w in sch.get(blk).writes
    )
    if computed or len(read.source.shape) != 2:
        return  # only a parameter can be packed ahead of time
    idx = [rng.min for rng in read.region]
    if not all(isinstance(v, tirx.Var) for v in idx):
        return
    pack_weight(sch, main, 1, lambda kk, nn: (nn // nr, kk, nn % nr))


def _pad_tiles(sch: s_tir.Schedule, main: SBlockRV, mr: int, nr: int, lanes: int) -> bool:
    """Pad ``I`` and ``J`` of the canonical matmul up to multiples of ``mr`` and ``nr``;
    whether it could.

    A predicate on ``J`` sits inside the vectorised loop, and LLVM turns every predicated
    vector into scalar code: ``Q @ K^T`` over ViT's 197 tokens then ran scalar in all its
    tiles. Padded, only the copies of ``A`` and ``B`` and the crop of ``C`` carry predicates.
    """
    try:
        sch.pad_einsum(main, [1, mr, nr, 1])
    except (s_tir.ScheduleError, tvm.error.TVMError):
        return False
    for block in sch.get_producers(main):
        if sch.get(block).name_hint.endswith("_pad"):
            schedule_spatial_block(sch, block, FallbackKnobs(vector_lanes=lanes))
    return True


def _row_tile(m: int | None, tile_rows: int) -> int:
    """Rows per register tile for ``m`` rows of ``C`` and at most ``tile_rows``.

    ``m``'s largest divisor up to ``tile_rows`` where that is over half of ``tile_rows``;
    otherwise ``tile_rows``, whose last tile is predicated. MobileNetV2's 7x7 1x1 convs
    (``m = 49``) divide only into single rows, two vectors per broadcast, which starves the
    FMA units; a predicated tile keeps the target's tile shape instead.
    """
    if m is None:
        return tile_rows
    if m <= tile_rows:
        return m
    divisor = pick_factor(m, tile_rows)
    return divisor if 2 * divisor > tile_rows else tile_rows


def _sample_knobs(
    sampler: KnobSampler,
    knobs: MatmulKnobs,
    m: int | None,
    n: int | None,
    k: int | None,
    b_contiguous: bool,
) -> MatmulKnobs:
    """``knobs`` with the ones that matter for an ``m x n x k`` matmul drawn by ``sampler``.

    Candidates: tiles of 1-4 SIMD registers of columns (those past ``n`` all tile ``n`` whole,
    so one of them is enough) by 1-8 rows (up to ``m``), within the register file next to the
    operands; ``k`` blocks dividing ``k``; an unroll limit that unrolls the innermost ``k``
    loop whole where that is at most 512 steps; weight panels on or off where ``B`` is
    contiguous.
    """
    lanes = knobs.vector_lanes
    accumulators = (16 if lanes == 8 else 32) - 4  # AVX2: 16 registers; AVX-512, NEON: 32
    vectors = [v for v in (1, 2, 3, 4) if n is None or lanes * (v - 1) < n]
    tile_vectors = sampler("tile_vectors", knobs.tile_vectors, vectors)
    rows = [r for r in (1, 2, 3, 4, 6, 8) if (not m or r <= m) and r * tile_vectors <= accumulators]
    tile_rows = sampler("tile_rows", knobs.tile_rows, rows)
    blocks = [b for b in (32, 64, 128, 256) if k and k > b and k % b == 0]
    k_block = sampler("k_block", knobs.k_block, blocks)
    unroll_k = knobs.unroll_k
    if k:
        # the pragma unrolls a loop whose steps (extent x unrolled rows inside) fit in it
        steps = (k_block if 0 < k_block < k else k) * _row_tile(m, tile_rows)
        unroll_k = sampler("unroll_k", knobs.unroll_k, [steps] if steps <= 512 else [])
    pack_b = knobs.pack_b
    if b_contiguous:
        pack_b = bool(sampler("pack_b", int(knobs.pack_b), [0, 1]))
    knobs = replace(
        knobs,
        tile_vectors=tile_vectors,
        tile_rows=tile_rows,
        k_block=k_block,
        unroll_k=unroll_k,
        pack_b=pack_b,
    )
    if m and n and k and not 0 < k_block < k and not _b_in_l1(k, n):
        rows_first = int(_row_tasks(knobs, m, n))
        knobs = replace(knobs, row_tasks=sampler("row_tasks", rows_first, [0, 1]))
    return knobs


def _row_tasks(knobs: MatmulKnobs, m: int | None, n: int | None) -> bool:
    """Whether the parallel tiles put the rows of ``C`` outside (``MatmulKnobs.row_tasks``)."""
    if knobs.row_tasks >= 0:
        return bool(knobs.row_tasks)
    return m is not None and n is not None and m >= n


class Matmul(CPUScheduleRule):
    """Register-tiled matmul for 2-D, batched and transposed-operand matmuls with epilogues."""

    knobs_type = MatmulKnobs
    samples_knobs = True

    def schedule(
        self,
        sch: s_tir.Schedule,
        target: Target,
        knobs: MatmulKnobs,
        sampler: KnobSampler | None = None,
    ) -> s_tir.Schedule:
        main, traits, kinds = inline_matmul_prologue(sch)
        b_contiguous = innermost_kind(sch.get(main).reads[1].region, kinds) == _J

        # Step 1. Normalise to C[S, I, J] += A[S, I, K] * B[S, K, J].
        reindex_a, reindex_b = normalize_matmul(
            sch, main, traits, [_S, _I, _K], [_S, _K, _J], [_S, _I, _J]
        )
        sch.compute_inline(reindex_a)
        if b_contiguous:
            sch.compute_inline(reindex_b)
        else:  # one transposing copy so that the inner loop reads B contiguously
            schedule_spatial_block(sch, reindex_b, FallbackKnobs(vector_lanes=knobs.vector_lanes))

        # Step 2. Register tiles.
        b, i, j, k = sch.get_loops(main)
        lanes = knobs.vector_lanes
        n_ext, m_ext, k_ext = loop_extent(sch, j), loop_extent(sch, i), loop_extent(sch, k)
        if sampler is not None:
            knobs = _sample_knobs(sampler, knobs, m_ext, n_ext, k_ext, b_contiguous)
        nr_max = lanes * knobs.tile_vectors
        if n_ext is not None and n_ext <= nr_max:
            nr = n_ext
        else:
            vec_multiples = [lanes * v for v in range(knobs.tile_vectors, 0, -1)]
            fits = [t for t in [*vec_multiples, lanes // 2] if n_ext is not None and n_ext % t == 0]
            if fits:
                nr = fits[0]
            elif n_ext is not None:
                # no divisor of whole vectors (ViT's 197 tokens): columns padded up to the
                # tile that pads least, of at least two vectors where the target has them
                tiles = vec_multiples[:-1] or vec_multiples
                nr = min(tiles, key=lambda t: (-(-n_ext // t) * t, -t))
            else:
                nr = nr_max
        mr = _row_tile(m_ext, knobs.tile_rows)
        pad_j = nr if n_ext is not None and n_ext % nr else 1
        pad_i = mr if m_ext is not None and m_ext % mr else 1
        padded = max(pad_i, pad_j) > 1 and _pad_tiles(sch, main, pad_i, pad_j, lanes)
        if padded and pad_j > 1:
            n_ext = -(-n_ext // nr) * nr
        if knobs.pack_b and b_contiguous and n_ext is not None and n_ext > nr and n_ext % nr == 0:
            _pack_weight_panels(sch, main, nr)
        io, ii = sch.split(i, [None, mr])
        jo, ji = sch.split(j, [None, nr])
        k_block = pick_factor(k_ext, knobs.k_block) if knobs.k_block else 0
        panels = k_ext is not None and 1 < k_block < k_ext
        if panels:
            # B panel blocks of k_block x nr stay in L1 while every row tile passes over them;
            # the panel's C (all rows) accumulates across the blocks
            ko, ki = sch.split(k, [None, k_block])
            sch.reorder(b, jo, ko, io, ki, ii, ji)
            tile, inner_k = sch.fuse(b, jo), ki
        elif _b_in_l1(k_ext, n_ext):
            # all of B stays in L1 (pointwise convs: K of 16-32): each row tile of A is read
            # once for every column tile, and each row of C is written whole
            sch.reorder(b, io, jo, k, ii, ji)
            tile, inner_k = sch.fuse(b, io, jo), k
        elif _row_tasks(knobs, m_ext, n_ext):
            # each core takes its own rows of A, which the kernel before it wrote from the
            # same core (in its L2), and reads all of B, where with panels outside each core
            # reads all of A
            sch.reorder(b, io, jo, k, ii, ji)
            tile, inner_k = sch.fuse(b, io, jo), k
        else:
            sch.reorder(b, jo, io, k, ii, ji)
            tile, inner_k = sch.fuse(b, jo, io), k
        sch.parallel(tile)
        sch.unroll(ii)
        width = vector_width(nr, lanes)
        if nr > width:
            # power-of-two vectors: LLVM splits a vector of 3 registers (or of 24 lanes) into
            # odd pieces and shuffles, not into 3 registers
            jv, jl = sch.split(ji, [None, width])
            sch.unroll(jv)
            sch.vectorize(jl)
        else:
            sch.vectorize(ji)
        if knobs.unroll_k:
            sch.annotate(inner_k, "pragma_auto_unroll_max_step", knobs.unroll_k)
            sch.annotate(inner_k, "pragma_unroll_explicit", 1)

        # Step 3. Accumulate in registers (or the panel's C); the epilogue runs from them.
        if padded:
            # the padded C is the tile's accumulator; the crop (with the epilogue) writes the
            # tile's valid columns (inlined into the accumulator's write-back, it lost the crop)
            acc = sch.get_consumers(main)[0]
        else:
            acc = sch.cache_write(main, 0, TILE_SCOPE)
        write_back_at(sch, acc, tile)
        wj = sch.get_loops(acc)[-1]
        if nr > width:
            wj = sch.split(wj, [None, width])[1]
        sch.vectorize(wj)
        sch.decompose_reduction(main, ko if panels else k)
        return sch
