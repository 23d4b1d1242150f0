"""The depthwise paths of the conv rules: one input channel per output channel, so each input
value feeds only ``kh x kw`` FMAs and the schedule is about keeping the padded input in cache.

* NCHW (:class:`~.conv2d.Conv2d`): a tile is a few output rows of one channel, every column of a
  row in independent vector accumulators; the padded input rows it reads are copied inside it.
* NHWC (:class:`~.conv2d_nhwc.Conv2dNHWC`): a tile is a few pixels by one channel vector; a task
  takes a block of rows by a chunk of pixels and copies their padded input, all channels, into
  a buffer that stays in L2, and each tile of pixels then walks the channel vectors.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.s_tir.schedule import LoopRV, SBlockRV

from .base import free_vars, loop_extent, pick_factor
from .conv2d_block import linear_stride
from .tiling import (
    accumulate_at,
    balanced_split,
    copy_into,
    finish_register_tile,
    vectorize_innermost,
)

__all__ = [
    "NHWC_DEPTHWISE_COLUMNS",
    "is_depthwise_nchw",
    "nchw_depthwise_tile",
    "nhwc_depthwise_rows",
    "schedule_depthwise_nchw",
    "schedule_depthwise_nhwc",
]


# --- NCHW ---------------------------------------------------------------------------------------


#: Fewest independent vectors per output row (each accumulates a chain of ``kh * kw``
#: dependent FMAs; fewer leave the FMA units waiting on latency).
_NCHW_MIN_VECTORS = 4


def is_depthwise_nchw(sch: s_tir.Schedule, main: SBlockRV, data_pos: int) -> bool:
    """One input channel per output channel (``groups == channels``, multiplier 1)."""
    stmt = sch.get(main)
    data, out = stmt.reads[data_pos].source, stmt.writes[0].source
    rc = loop_extent(sch, sch.get_loops(main)[4])
    return rc == 1 and int(data.shape[1]) == int(out.shape[1])


def nchw_depthwise_tile(
    sch: s_tir.Schedule, main: SBlockRV, lanes: int, rows: int
) -> tuple[int, int] | None:
    """``(rows, vector width)`` of a tile of at most ``rows`` rows, or ``None`` for rows too
    narrow for it."""
    _, _, y, x, *_ = sch.get_loops(main)
    oh, ow = loop_extent(sch, y), loop_extent(sch, x)
    if oh is None or ow is None:
        return None
    xv = pick_factor(ow, lanes, [lanes, lanes // 2])
    if xv < lanes // 2 or ow // xv < _NCHW_MIN_VECTORS:
        return None
    return pick_factor(oh, rows), xv


def _column_stride(sch: s_tir.Schedule, main: SBlockRV) -> int:
    """The stride of the output-column axis in the data operand's index (1 if unknown)."""
    stmt = sch.get(main)
    x = stmt.iter_vars[3].var
    for read in stmt.reads:
        index = read.region[3].min if len(read.region) == 4 else None
        if index is not None and x in free_vars(index):
            stride = linear_stride(index, x)
            if stride is not None:
                return max(stride, 1)
    return 1


def schedule_depthwise_nchw(
    sch: s_tir.Schedule, main: SBlockRV, pad: SBlockRV | None, lanes: int, rows: int
) -> s_tir.Schedule:
    """Tiles of one channel by :func:`nchw_depthwise_tile` output rows, every column of a row
    in independent vector accumulators; the padded input rows the tile reads are copied into a
    small buffer inside the tile (in L1), never through memory."""
    rows, xv = nchw_depthwise_tile(sch, main, lanes, rows)
    n, f, y, x, rc, ry, rx = sch.get_loops(main)
    yo, yi = sch.split(y, [None, rows])
    xo, xi = sch.split(x, [None, xv])
    sch.reorder(n, f, yo, yi, rc, ry, rx, xo, xi)
    tile = sch.fuse(n, f, yo)
    sch.parallel(tile)
    sch.unroll(xo)
    sch.vectorize(xi)
    vectorize_innermost(sch, accumulate_at(sch, main, yi))
    if pad is not None:
        stride = _column_stride(sch, main)
        if stride > 1:
            # phases of the padded columns apart, so that strided taps read whole vectors
            sch.transform_layout(
                pad,
                ("write", 0),
                lambda b, c, h, w: (b, c, h, w % stride, w // stride),
                pad_value=0.0,
            )
        copy_into(sch, pad, tile)
    sch.decompose_reduction(main, rc)
    return sch


# --- NHWC ---------------------------------------------------------------------------------------


#: Pixels of one channel vector per tile. Each pixel's input is loaded per tap, and LLVM keeps
#: the loads a row of taps shares in registers: wider channel tiles (3 vectors x 8 pixels)
#: spill them.
NHWC_DEPTHWISE_COLUMNS = 8


def nhwc_depthwise_rows(rows: int, unit_stride: bool) -> int:
    """Output rows per task: ``rows``, or by default four for stride 1 and one for strided
    convs, whose rows share fewer input rows."""
    return rows or (4 if unit_stride else 1)


def schedule_depthwise_nhwc(
    sch: s_tir.Schedule,
    main: SBlockRV,
    tile_shape: tuple[int, int, int],
    lanes: int,
    pixels: int,
    cores: int,
    pixels_outside_taps: bool = False,
) -> LoopRV:
    """Tasks of ``rows`` x a chunk of at most ``pixels`` pixels and their channel vectors (all
    of them, or a share that leaves tasks enough for the cores), in register tiles of ``vecs``
    vectors of ``lanes`` by ``cols`` pixels (``tile_shape`` is ``(vecs, cols, rows)``).

    Returns the task loop, where the task's padded input is to be copied, all its channels at
    once. Each tile of pixels walks the channel vectors, so that the input lines it loads are
    used whole while in L1; walking the vectors outside the pixels would copy the input once
    per vector, each copy reading one line of every pixel at a stride of the channel count.

    ``pixels_outside_taps`` runs each pixel's taps in turn instead of each tap across the
    tile's pixels (see :data:`~.conv2d_nhwc._NEON_DEPTHWISE_ROW_COLUMNS`).
    """
    vecs, cols, rows = tile_shape
    n, y, x, f, ry, rx, rc = sch.get_loops(main)
    # rows and chunk: the padded input a task copies overlaps its neighbours' by the
    # kernel's halo only (one output row per task copied each input row three times)
    rows = pick_factor(loop_extent(sch, y), rows)
    width = loop_extent(sch, x) or cols
    chunk = pick_factor(width // cols, max(pixels // cols, 1)) * cols
    fo, fv, fl = sch.split(f, [None, vecs, lanes])
    yo, yi = sch.split(y, [None, rows])
    xc, xo, xi = sch.split(x, [None, chunk // cols, cols])
    tasks = (loop_extent(sch, yo) or 1) * (loop_extent(sch, xc) or 1)
    vectors = loop_extent(sch, fo) or 1
    share = balanced_split(vectors, vectors, tasks, cores)
    fc, fo = sch.split(fo, [None, share])
    if pixels_outside_taps:
        sch.reorder(n, yo, xc, fc, yi, xo, fo, xi, ry, rx, rc, fv, fl)
    else:
        sch.reorder(n, yo, xc, fc, yi, xo, fo, ry, rx, rc, xi, fv, fl)
    tile = sch.fuse(n, yo, xc, fc)
    sch.parallel(tile)
    finish_register_tile(sch, main, fo, (xi, fv, fl), ry, lanes)
    return tile
