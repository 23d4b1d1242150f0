"""Schedule steps the tiled CPU rules share: register-tile accumulators and their write-back,
copies made inside a tile, packed weight copies, and how loops are cut into vectors and tasks.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.s_tir.dlight.gpu.matmul import auto_inline_consumer_chain
from tvm.s_tir.schedule import LoopRV, SBlockRV

from .base import LAYOUT_REWRITE_ATTR, TILE_SCOPE

__all__ = [
    "accumulate_at",
    "balanced_split",
    "copy_into",
    "finish_register_tile",
    "pack_weight",
    "vector_width",
    "vectorize_innermost",
    "write_back_at",
]


def write_back_at(sch: s_tir.Schedule, acc: SBlockRV, loop: LoopRV) -> None:
    """Fuse the epilogue into the accumulator's write-back ``acc`` and run it under ``loop``."""
    auto_inline_consumer_chain(sch, acc)
    sch.reverse_compute_at(acc, loop, preserve_unit_loops=True)


def accumulate_at(sch: s_tir.Schedule, main: SBlockRV, loop: LoopRV) -> SBlockRV:
    """Accumulate ``main`` in a tile buffer (:data:`~.base.TILE_SCOPE`) written back, epilogue
    fused, under ``loop``; returns the write-back block."""
    acc = sch.cache_write(main, 0, TILE_SCOPE)
    write_back_at(sch, acc, loop)
    return acc


def vectorize_innermost(sch: s_tir.Schedule, block: SBlockRV, lanes: int | None = None) -> None:
    """Vectorise the innermost loop of ``block``: whole, or split into vectors of ``lanes``."""
    inner = sch.get_loops(block)[-1]
    sch.vectorize(inner if lanes is None else sch.split(inner, [None, lanes])[1])


def copy_into(sch: s_tir.Schedule, block: SBlockRV, loop: LoopRV, lanes: int | None = None) -> None:
    """Compute a producer (a padding copy) under ``loop``, vectorised: the part of it one
    iteration reads is copied right before it, in cache, never making a round trip through
    memory, and the loop that reads it carries no boundary test."""
    sch.compute_at(block, loop, preserve_unit_loops=True)
    vectorize_innermost(sch, block, lanes)


def finish_register_tile(
    sch: s_tir.Schedule,
    main: SBlockRV,
    tile: LoopRV,
    register_tile: tuple[LoopRV, LoopRV, LoopRV],
    first_reduction: LoopRV,
    lanes: int,
) -> None:
    """The register tile (pixels, vectors, lanes) unrolled and vectorised; accumulate in
    registers, the epilogue writing vectors of ``lanes`` from them at ``tile``."""
    pixels, vectors, lane = register_tile
    sch.unroll(pixels)
    sch.unroll(vectors)
    sch.vectorize(lane)
    acc = accumulate_at(sch, main, tile)
    vectorize_innermost(sch, acc, lanes)
    sch.decompose_reduction(main, first_reduction)


def pack_weight(sch: s_tir.Schedule, main: SBlockRV, read_pos: int, index_map) -> SBlockRV:
    """Read operand ``read_pos`` of ``main`` through a copy laid out by ``index_map`` and marked
    as a layout rewrite (:data:`~.base.LAYOUT_REWRITE_ATTR`), which ``PackWeights`` moves to
    compile time for a constant weight; returns the copy's block."""
    packed = sch.cache_read(main, read_pos, "global")
    sch.transform_layout(packed, ("write", 0), index_map)
    sch.annotate(packed, LAYOUT_REWRITE_ATTR, 1)
    sch.parallel(sch.get_loops(packed)[0])
    return packed


def vector_width(extent: int | None, lanes: int) -> int:
    """Widest power-of-two vector up to ``lanes`` that divides ``extent`` (``lanes`` when
    symbolic, at least 1): LLVM splits a vector of 3 registers, or of 24 lanes, into odd
    pieces and shuffles."""
    width = lanes
    while width > 1 and extent is not None and extent % width:
        width //= 2
    return width


def balanced_split(extent: int, most: int, others: int, cores: int) -> int:
    """Iterations per task of a loop of ``extent`` split across tasks: the most (up to
    ``most``) dividing ``extent`` whose ``others x extent / part`` parallel tasks split evenly
    over ``cores`` (or are many): seven tasks on two cores leave one core idle a seventh of
    the time."""
    divisors = [d for d in range(max(min(most, extent), 1), 0, -1) if extent % d == 0]
    for part in divisors:
        tasks = others * (extent // part)
        if tasks % cores == 0 or tasks >= 8 * cores:
            return part
    return divisors[0]
