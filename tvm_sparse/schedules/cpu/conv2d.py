"""Direct CPU schedule for NCHW conv2d (plain, strided, grouped, depthwise) with fused epilogues.

The conv block ``out[n, f, y, x] += pad[n, c(f, rc), y*s + ry, x*s + rx] * w[f, rc, ry, rx]`` is
computed in register tiles, by one of four paths (see :class:`Conv2d`): output-channel vectors
(dense convs, weights read from an ``OIHW16o`` copy that ``PackWeights`` folds at compile time),
pixel vectors (pointwise convs, as the GEMM ``W[f, c] @ X[c, p]``), depthwise row tiles
(:mod:`.depthwise_conv2d`), or column vectors (the rest). The padding stage is materialised once
at the root (parallel, one vector per row), or copied inside the tile, so that the inner loop
carries no boundary test; a padding stage that does not pad (1x1 convolutions) is inlined.
Bias, batch norm, activation and residual epilogues run on each tile from the accumulators::

    for n_fo_y_xo in T.parallel(...):            # tiles of 8 channels x 28 columns
        acc[0:8, 0:28] = 0
        for rc, ry, rx in T.grid(64, 3, 3):
            for fi in T.unroll(8):
                for xi in T.vectorized(28):
                    acc[fi, xi] += pad_temp[..., xi + rx] * w[..., rc, ry, rx]
        for fi, xi in T.grid(8, 28):             # xi vectorised, epilogue fused
            out[...] = T.max(acc[fi, xi] + bias[...], 0)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tvm import s_tir, tirx
from tvm.s_tir.dlight.gpu.matmul import auto_inline_consumer_chain
from tvm.s_tir.schedule import LoopRV, SBlockRV
from tvm.target import Target

from .base import (
    TILE_SCOPE,
    CPUScheduleRule,
    NotApplicable,
    VectorKnobs,
    free_vars,
    loop_extent,
    pick_factor,
    vector_lanes,
)
from .conv2d_block import find_conv2d_iteration
from .depthwise_conv2d import is_depthwise_nchw, nchw_depthwise_tile, schedule_depthwise_nchw
from .fallback import FallbackKnobs, schedule_spatial_block
from .knob_sampler import KnobSampler
from .tiling import accumulate_at, copy_into, pack_weight, vectorize_innermost, write_back_at

__all__ = ["Conv2d", "Conv2dKnobs"]


@dataclass
class Conv2dKnobs(VectorKnobs):
    """Knobs of :class:`Conv2d`.

    Attributes
    ----------
    vector_lanes : int
        fp32 lanes of one SIMD register.
    tile_channels : int
        ``fr``: output channels per register tile (upper bound; a divisor is used).
    tile_columns : int
        ``xr``: output columns per register tile (upper bound; a divisor of the width is used).
    inline_padding : bool
        Inline a padding stage that has boundary tests into the conv (slower, no temporary).
    channel_vectors : int
        Output-channel path (``groups == 1``): most SIMD registers of output channels per tile;
        0 turns the path off and every conv gets the column-vector schedule.
    accumulators : int
        Output-channel path: accumulator registers per tile (``channel_vectors x columns``).
    pad_in_tile : bool
        Column path: pad the input rows each tile reads right before it (in cache) instead of
        padding the whole input once (a round trip through memory, which dominates depthwise).
    pack_weights : bool
        Output-channel path: read the weight through an ``OIHW{lanes}o`` copy marked as a layout
        rewrite, which ``PackWeights`` moves to compile time for constant weights.
    pixel_vectors : int
        Pointwise path (1x1, stride 1, no padding, ``H*W`` a multiple of the SIMD width): most
        SIMD registers of pixels per tile, the rest of the accumulators going to output
        channels; 0 turns the path off.
    depthwise_rows : int
        Depthwise path: output rows per tile (one channel, whole rows); the padded input rows
        they read are copied inside the tile. 0 sends depthwise convs to the column path.
    chunk_bytes : int
        Pointwise path: input bytes of one chunk of pixels (all input channels), which every
        channel tile reads in turn; about half the L2 cache.
    """

    tile_channels: int = 8
    tile_columns: int = 16
    inline_padding: bool = False
    channel_vectors: int = 2
    accumulators: int = 16
    pad_in_tile: bool = False
    pack_weights: bool = True
    pixel_vectors: int = 4
    depthwise_rows: int = 8
    chunk_bytes: int = 256 * 1024

    @classmethod
    def for_target(cls, target: Target) -> Conv2dKnobs:
        """Defaults for ``target``: about 16 accumulator registers of its SIMD width."""
        lanes = vector_lanes(target)
        # Columns wider than one register get odd-width vectors (56 -> 28) that LLVM
        # lowers poorly: one register of columns, 8 channels.
        # Output-channel tiles: 28 of the 32 zmm registers as accumulators spill in LLVM's
        # allocation; 14-16 (2 channel vectors x 7-8 columns) do not. 16 ymm registers
        # leave 12.
        accumulators = 16 if lanes >= 16 else 12
        return cls(
            vector_lanes=lanes, tile_channels=8, tile_columns=lanes, accumulators=accumulators
        )


def _same_extent(a: tirx.PrimExpr, b: tirx.PrimExpr) -> bool:
    if isinstance(a, tirx.IntImm) and isinstance(b, tirx.IntImm):
        return a.value == b.value
    return a.same_as(b)


def _pads(sch: s_tir.Schedule, block: SBlockRV) -> bool:
    """Whether a producer block pads its input (writes a larger buffer than it reads)."""
    stmt = sch.get(block)
    out = stmt.writes[0].source.shape
    return any(
        len(r.source.shape) == len(out)
        and any(not _same_extent(a, b) for a, b in zip(r.source.shape, out, strict=True))
        for r in stmt.reads
    )


def find_conv2d_block(sch: s_tir.Schedule) -> tuple[SBlockRV, int]:
    """The conv2d block of the function and the read index of its data operand."""
    main = find_conv2d_iteration(sch, "NCHW")
    stmt = sch.get(main)
    f, y, x = (iv.var for iv in stmt.iter_vars[1:4])
    data_pos = None
    for pos, read in enumerate(stmt.reads):
        region = read.region
        if len(region) != 4:
            raise NotApplicable("operands are not 4-D")
        if x in free_vars(region[3].min) and y in free_vars(region[2].min):
            data_pos = pos
    if data_pos is None:
        raise NotApplicable("no input indexed by output rows and columns")
    weight = stmt.reads[1 - data_pos].region
    if not weight[0].min.same_as(f):
        raise NotApplicable("weight is not indexed by the output channel first")
    return main, data_pos


def _is_dense_conv(sch: s_tir.Schedule, main: SBlockRV, data_pos: int) -> bool:
    """Whether every output channel reads every input channel (``groups == 1``)."""
    stmt = sch.get(main)
    rc = stmt.iter_vars[4].var
    chan = stmt.reads[data_pos].region[1].min
    return isinstance(chan, tirx.Var) and chan.same_as(rc)


def _channel_tile(channels: int, width: int | None, knobs: Conv2dKnobs) -> tuple[int, int]:
    """``(vectors, columns)`` of the output-channel tile: the most accumulators in budget."""
    best = (1, 1)
    for vecs in range(max(knobs.channel_vectors, 1), 0, -1):
        if (channels // knobs.vector_lanes) % vecs:
            continue
        cols = pick_factor(width, max(knobs.accumulators // vecs, 1))
        if vecs * cols > best[0] * best[1]:
            best = (vecs, cols)
    return best


def _pixel_tile(
    sch: s_tir.Schedule, main: SBlockRV, data_pos: int, knobs: Conv2dKnobs
) -> tuple[int, int] | None:
    """``(channels, pixel vectors)`` of a pointwise tile, or ``None`` if not pointwise.

    Pointwise: a 1x1 window, stride 1, no padding, so that the input plane is the output
    plane and ``H*W`` pixels form one contiguous run per channel (a GEMM ``W[f, c] @ X[c, p]``).
    """
    stmt = sch.get(main)
    loops = sch.get_loops(main)
    extents = [loop_extent(sch, loop) for loop in loops]
    if None in extents or extents[5] != 1 or extents[6] != 1:
        return None
    data = stmt.reads[data_pos].source
    out = stmt.writes[0].source
    if [int(v) for v in data.shape[2:]] != [int(v) for v in out.shape[2:]]:
        return None
    if not _is_dense_conv(sch, main, data_pos) and extents[4] != 1:
        return None  # grouped: each channel reads its group, depthwise is fine (rc == 1)
    lanes = knobs.vector_lanes
    hw = extents[2] * extents[3]
    if hw % lanes:
        return None
    pv = pick_factor(hw // lanes, knobs.pixel_vectors)
    fr = pick_factor(extents[1], max(knobs.accumulators // pv, 1))
    return fr, pv


def _schedule_padding(sch: s_tir.Schedule, block: SBlockRV, knobs: Conv2dKnobs) -> None:
    """Parallel rows, each row one vector statement (row widths rarely divide a register)."""
    loops = sch.get_loops(block)
    width = loop_extent(sch, loops[-1])
    if len(loops) < 2 or width is None or width > 16 * knobs.vector_lanes:
        schedule_spatial_block(sch, block, FallbackKnobs(vector_lanes=knobs.vector_lanes))
        return
    sch.parallel(sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0])
    sch.vectorize(loops[-1])


def _sample_knobs(
    sampler: KnobSampler, sch: s_tir.Schedule, main: SBlockRV, data_pos: int, knobs: Conv2dKnobs
) -> Conv2dKnobs:
    """``knobs`` with the ones that matter for this conv drawn by ``sampler``, path by path.

    First how padding is done (where there is padding), then the path: pointwise tiles where
    the conv is pointwise, output-channel vectors where it is dense, row tiles where it is
    depthwise (0 turns each off), then the tile of the path taken. Candidates keep within the
    register file and divide the loop they tile; accumulator budgets that give the same tile
    as an earlier one are left out.
    """
    lanes = knobs.vector_lanes
    budget = [a for a in (8, 12, 16, 20, 24, 28) if a <= (16 if lanes == 8 else 32) - 4]
    extents = [loop_extent(sch, loop) for loop in sch.get_loops(main)]
    channels, width = extents[1], extents[3]
    padding = any(_pads(sch, producer) for producer in sch.get_producers(main))
    if padding:
        inline = sampler("inline_padding", int(knobs.inline_padding), [0, 1])
        knobs = replace(knobs, inline_padding=bool(inline))
    if not padding and _pixel_tile(sch, main, data_pos, replace(knobs, pixel_vectors=1)):
        pixels = extents[2] * extents[3] // lanes
        vectors = [0, *(v for v in (1, 2, 4, 8) if pixels % v == 0)]
        knobs = replace(knobs, pixel_vectors=sampler("pixel_vectors", knobs.pixel_vectors, vectors))
        if knobs.pixel_vectors > 0:
            tiles = {}
            for acc in [knobs.accumulators, *budget]:
                option = replace(knobs, accumulators=acc)
                tiles.setdefault(_pixel_tile(sch, main, data_pos, option), acc)
            acc = sampler("accumulators", knobs.accumulators, tiles.values())
            return replace(knobs, accumulators=acc)
    if channels is not None and channels % lanes == 0 and _is_dense_conv(sch, main, data_pos):
        vectors = [0, *(v for v in (1, 2, 4) if (channels // lanes) % v == 0)]
        vecs = sampler("channel_vectors", knobs.channel_vectors, vectors)
        knobs = replace(knobs, channel_vectors=vecs)
        if vecs > 0:
            tiles = {}
            for acc in [knobs.accumulators, *budget]:
                option = replace(knobs, accumulators=acc)
                tiles.setdefault(_channel_tile(channels, width, option), acc)
            acc = sampler("accumulators", knobs.accumulators, tiles.values())
            pack = bool(sampler("pack_weights", int(knobs.pack_weights), [0, 1]))
            return replace(knobs, accumulators=acc, pack_weights=pack)
    if (
        is_depthwise_nchw(sch, main, data_pos)
        and nchw_depthwise_tile(sch, main, lanes, knobs.depthwise_rows) is not None
    ):
        rows = [0, *(r for r in (1, 2, 4, 8, 16) if extents[2] and extents[2] % r == 0)]
        knobs = replace(knobs, depthwise_rows=sampler("depthwise_rows", knobs.depthwise_rows, rows))
        if knobs.depthwise_rows > 0:
            return knobs
    fr = [f for f in (4, 8, 16) if channels and channels % f == 0]
    xr = [lanes // 2, lanes, 2 * lanes] if width is None or width > lanes // 2 else []
    knobs = replace(
        knobs,
        tile_channels=sampler("tile_channels", knobs.tile_channels, fr),
        tile_columns=sampler("tile_columns", knobs.tile_columns, xr),
    )
    if padding and not knobs.inline_padding:
        knobs = replace(
            knobs, pad_in_tile=bool(sampler("pad_in_tile", int(knobs.pad_in_tile), [0, 1]))
        )
    return knobs


class Conv2d(CPUScheduleRule):
    """Direct NCHW conv2d in register tiles, by the first path that fits the conv.

    * pointwise (1x1, stride 1, no padding, ``H*W`` a multiple of the SIMD width): tiles of
      ``pixel_vectors`` registers of the flattened pixel axis by a few output channels;
    * ``groups == 1`` and output channels a multiple of the SIMD width: tiles of
      ``channel_vectors`` registers of output channels by a few output columns. Each input value
      is broadcast against a register of weights read from an ``OIHW{lanes}o`` copy of the weight
      (a layout rewrite that ``PackWeights`` folds away for constant weights); accumulators are
      kept channels-innermost, the epilogue writes them back to NCHW;
    * depthwise with rows of a few vectors: ``depthwise_rows`` rows of one channel
      (:func:`~.depthwise_conv2d.schedule_depthwise_nchw`);
    * otherwise (grouped, odd channel counts): tiles of ``tile_channels`` channels by
      ``tile_columns`` columns, vectorised over the output columns.
    """

    knobs_type = Conv2dKnobs
    samples_knobs = True

    def schedule(
        self,
        sch: s_tir.Schedule,
        target: Target,
        knobs: Conv2dKnobs,
        sampler: KnobSampler | None = None,
    ) -> s_tir.Schedule:
        main, data_pos = find_conv2d_block(sch)
        if sampler is not None:
            knobs = _sample_knobs(sampler, sch, main, data_pos, knobs)
        pads = []
        for producer in sch.get_producers(main):
            if knobs.inline_padding or not _pads(sch, producer):
                sch.compute_inline(producer)
            else:
                pads.append(producer)
        channels = loop_extent(sch, sch.get_loops(main)[1])
        if knobs.pixel_vectors > 0 and not pads and _pixel_tile(sch, main, data_pos, knobs):
            return self._pixel_vectors(sch, main, data_pos, knobs)
        if (
            knobs.channel_vectors > 0
            and channels is not None
            and channels % knobs.vector_lanes == 0
            and _is_dense_conv(sch, main, data_pos)
        ):
            for pad in pads:
                _schedule_padding(sch, pad, knobs)
            return self._channel_vectors(sch, main, 1 - data_pos, knobs)
        lanes, rows = knobs.vector_lanes, knobs.depthwise_rows
        if (
            rows > 0
            and is_depthwise_nchw(sch, main, data_pos)
            and len(pads) <= 1
            and nchw_depthwise_tile(sch, main, lanes, rows) is not None
        ):
            return schedule_depthwise_nchw(sch, main, pads[0] if pads else None, lanes, rows)
        tile = self._column_vectors(sch, main, knobs)
        for pad in pads:
            if knobs.pad_in_tile:
                copy_into(sch, pad, tile)
            else:
                _schedule_padding(sch, pad, knobs)
        return sch

    @staticmethod
    def _channel_vectors(
        sch: s_tir.Schedule, main: SBlockRV, weight_pos: int, knobs: Conv2dKnobs
    ) -> s_tir.Schedule:
        lanes = knobs.vector_lanes
        n, f, y, x, rc, ry, rx = sch.get_loops(main)
        vecs, xr = _channel_tile(loop_extent(sch, f), loop_extent(sch, x), knobs)
        if knobs.pack_weights:
            pack_weight(sch, main, weight_pos, lambda o, i, h, w: (o // lanes, i, h, w, o % lanes))
        fo, fv, fl = sch.split(f, [None, vecs, lanes])
        xo, xi = sch.split(x, [None, xr])
        sch.reorder(n, fo, y, xo, rc, ry, rx, xi, fv, fl)
        tile = sch.fuse(n, fo, y, xo)
        sch.parallel(tile)
        sch.unroll(xi)
        sch.unroll(fv)
        sch.vectorize(fl)

        acc = sch.cache_write(main, 0, TILE_SCOPE)
        # channels innermost, so that each accumulator register is a contiguous vector
        sch.transform_layout(main, ("write", 0), lambda b, c, h, w: (b, h, w, c))
        write_back_at(sch, acc, tile)
        # The epilogue runs on channel vectors as they sit in the accumulators (parameter loads
        # contiguous, stores strided) rather than transposing them to vectorise over columns.
        wf, wx = sch.get_loops(acc)[-3], sch.get_loops(acc)[-1]
        sch.reorder(wx, wf)
        sch.unroll(wx)
        sch.vectorize(wf)
        sch.decompose_reduction(main, rc)
        return sch

    @staticmethod
    def _pixel_vectors(
        sch: s_tir.Schedule, main: SBlockRV, data_pos: int, knobs: Conv2dKnobs
    ) -> s_tir.Schedule:
        """Pointwise conv as ``W[f, c] @ X[c, p]``: weights broadcast, pixels in vectors."""
        fr, pv = _pixel_tile(sch, main, data_pos, knobs)
        lanes = knobs.vector_lanes
        width = loop_extent(sch, sch.get_loops(main)[3])
        # one pixel axis p = y * W + x, for the main block and for the write-back below
        sch.transform_block_layout(
            main, lambda n, f, y, x, rc, ry, rx: (n, f, y * width + x, rc, ry, rx)
        )
        n, f, p, rc, ry, rx = sch.get_loops(main)
        tiles = loop_extent(sch, p) // (pv * lanes)
        # pixels in chunks whose input (all channels) stays in L2 while every channel tile
        # passes over it; within a chunk each output row is written as one sequential run
        in_channels = loop_extent(sch, rc)
        chunk = pick_factor(tiles, max(knobs.chunk_bytes // (4 * in_channels * pv * lanes), 1))
        pc, po, pi, pl = sch.split(p, [None, chunk, pv, lanes])
        fo, fi = sch.split(f, [None, fr])
        sch.reorder(n, pc, fo, po, rc, ry, rx, fi, pi, pl)
        sch.parallel(sch.fuse(n, pc, fo))
        tile = po
        sch.unroll(fi)
        sch.unroll(pi)
        sch.vectorize(pl)
        acc = sch.cache_write(main, 0, TILE_SCOPE)
        sch.transform_layout(main, ("write", 0), lambda n, f, y, x: (n, f, y * width + x))
        auto_inline_consumer_chain(sch, acc)
        sch.transform_block_layout(acc, lambda n, f, y, x: (n, f, y * width + x))
        sch.reverse_compute_at(acc, tile, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(acc)[-1])
        sch.decompose_reduction(main, rc)
        return sch

    @staticmethod
    def _column_vectors(sch: s_tir.Schedule, main: SBlockRV, knobs: Conv2dKnobs) -> LoopRV:
        n, f, y, x, rc, ry, rx = sch.get_loops(main)
        lanes = knobs.vector_lanes
        ow = loop_extent(sch, x)
        if ow is not None and ow <= knobs.tile_columns:
            xr = ow
        else:
            xr = pick_factor(ow, knobs.tile_columns)
            if xr < lanes // 2:
                xr = lanes  # no good divisor: accept a predicated tail
        fr = pick_factor(loop_extent(sch, f), knobs.tile_channels)
        fo, fi = sch.split(f, [None, fr])
        xo, xi = sch.split(x, [None, xr])
        sch.reorder(n, fo, y, xo, rc, ry, rx, fi, xi)
        tile = sch.fuse(n, fo, y, xo)
        sch.parallel(tile)
        sch.unroll(fi)
        sch.vectorize(xi)
        vectorize_innermost(sch, accumulate_at(sch, main, tile))
        sch.decompose_reduction(main, rc)
        return tile
