"""Direct CPU schedule for NHWC conv2d (plain, strided, pointwise, depthwise) with fused epilogues.

In NHWC the channels of a pixel are contiguous, so every vector of the kernel is a run of
channels and nothing is ever gathered, transposed or strided, whatever the stride or the plane
size (``ConvertToNHWC`` puts convolution networks in this layout). A dense conv (``groups == 1``)
is computed in register tiles of ``vecs`` output-channel vectors by ``cols`` output pixels of a
row; each input value is broadcast against weight vectors read from an ``[F / nr, C, KH, KW, nr]``
copy that ``PackWeights`` folds at compile time. A pointwise conv (1x1, stride 1, no padding) is
a GEMM over the flattened pixel axis, so its tiles run across row ends. Depthwise convs take the
path of :mod:`.depthwise_conv2d`. Epilogues run on each tile from the accumulators, as
contiguous vectors; output channels that are not whole registers use the widest power-of-two
vector that divides them (24 channels: three 8-lane vectors)::

    for fo_y_xo in T.parallel(...):               # tiles of 8 pixels x 2 channel vectors
        acc[0:8, 0:32] = 0
        for ry, rx, rc, xi, fv in T.grid(3, 3, 64, 8, 2):   # xi, fv unrolled
            for fl in T.vectorized(16):
                acc[xi, fv * 16 + fl] += pad_temp[..., rc] * w_packed[fo, rc, ry, rx, ...]
        for xi, f in T.grid(8, 32):               # f vectorised, epilogue fused
            out[..., f] = T.max(acc[xi, f] + bias[f], 0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from tvm import s_tir, tirx
from tvm.s_tir.schedule import LoopRV, SBlockRV
from tvm.target import Target

from ...targets.facts import is_neon
from .base import (
    PREFETCH_ATTR,
    CPUScheduleRule,
    NotApplicable,
    VectorKnobs,
    free_vars,
    loop_extent,
    num_cores,
    pick_factor,
    vector_lanes,
)
from .conv2d_block import find_conv2d_iteration, linear_stride
from .depthwise_conv2d import NHWC_DEPTHWISE_COLUMNS, nhwc_depthwise_rows, schedule_depthwise_nhwc
from .fallback import FallbackKnobs, schedule_spatial_block
from .knob_sampler import KnobSampler
from .tiling import balanced_split, finish_register_tile, pack_weight, vector_width

__all__ = ["Conv2dNHWC", "Conv2dNHWCKnobs"]


@dataclass
class Conv2dNHWCKnobs(VectorKnobs):
    """Knobs of :class:`Conv2dNHWC`.

    Attributes
    ----------
    vector_lanes : int
        fp32 lanes of one SIMD register.
    accumulators : int
        Most accumulator registers per tile (``vecs x cols``); a tile of all the output
        channels may take the register file but for its weight vectors and two spare.
    channel_vectors : int
        Most channel vectors per tile (``vecs``); the rest of the budget goes to pixels.
    pack_weights : bool
        Dense convs: read the weight through an ``[F / nr, C, KH, KW, nr]`` copy marked as a
        layout rewrite, which ``PackWeights`` moves to compile time for constant weights.
    pad_in_tile : bool
        Depthwise convs: pad the input each parallel task reads inside the task (in cache)
        instead of padding the whole input once at the start (a round trip through memory).
        On by default: a depthwise conv reads each input value a few times only.
    channel_block : int
        Dense convs: input channels per reduction block (0: no blocks). A row of output
        pixels then accumulates block by block in a buffer, and the block's weights stay in
        L1 for all the row's tiles.
    row_pixels : int
        Dense convs with channel blocks: most output pixels accumulated at a time (a chunk of
        the row, or of the flattened pixels of a pointwise conv).
    row_tasks : int
        Dense convs: 1 orders the parallel tasks by rows of output pixels (each core reads
        its share of the input and all the weights), 0 by tiles of output channels (all the
        input, its share of the weights); -1: rows where the input is at least as large as
        the weights.
    prefetch_pixels : int
        Dense convs with channel blocks and packed weights: prefetch the next block's weights
        (one contiguous chunk of the packed copy) while a block computes
        (:class:`~tvm_sparse.passes.InjectPrefetch`) when a chunk holds at most this many
        output pixels, where each weight feeds few FMAs and the conv waits on memory; 0:
        never. Wider chunks keep up without it, and the prefetches only cost them time.
    depthwise_rows : int
        Depthwise convs: output rows per task (a divisor of the height is used); 0: four for
        stride 1, one for strided convs (whose rows share fewer input rows).
    depthwise_pixels : int
        Depthwise convs: most output pixels of a row per task. A task reads whole pixels, all
        its channels at once, which the hardware prefetcher streams: whole rows (up to 112
        pixels) suit a 1 MB L2; smaller chunks keep the rows a task reads in a smaller L2
        while it walks the channel vectors.
    tile_vectors, tile_columns : int
        A fixed tile of channel vectors by pixels (divisors are used); 0 chooses the tile
        with the most accumulators within ``accumulators`` and ``channel_vectors``.
    depthwise_vectors, depthwise_columns : int
        Depthwise convs: the default tile, at most this many channel vectors (a divisor of
        the channel vectors) by this many pixels (a divisor of the row).
    depthwise_row_columns : int
        Depthwise convs: pixels of the default tile on rows that ``depthwise_columns`` does
        not divide (a divisor of the row; 7 for rows of 7 or 14), at ``depthwise_vectors``
        vectors; strided convs then run each pixel's taps in turn. 0: one vector by
        :data:`~.depthwise_conv2d.NHWC_DEPTHWISE_COLUMNS` pixels, in the usual order.
    """

    accumulators: int = 24
    channel_vectors: int = 4
    pack_weights: bool = True
    pad_in_tile: bool = True
    channel_block: int = 16
    row_pixels: int = 112
    prefetch_pixels: int = 64
    depthwise_rows: int = 0
    depthwise_pixels: int = 112
    row_tasks: int = -1
    tile_vectors: int = 0
    tile_columns: int = 0
    depthwise_vectors: int = 1
    depthwise_columns: int = NHWC_DEPTHWISE_COLUMNS
    depthwise_row_columns: int = 0

    @classmethod
    def for_target(cls, target: Target) -> Conv2dNHWCKnobs:
        """Defaults for ``target``: 24 of 32 zmm registers as accumulators (28 spill in LLVM's
        allocation), 12 of 16 ymm registers on AVX2; NEON's depthwise tile is
        :data:`_NEON_DEPTHWISE_TILE`, on short rows :data:`_NEON_DEPTHWISE_ROW_COLUMNS`."""
        lanes = vector_lanes(target)
        knobs = cls(vector_lanes=lanes, accumulators=24 if lanes >= 16 else 12)
        if is_neon(target):
            vectors, columns = _NEON_DEPTHWISE_TILE
            knobs = replace(
                knobs,
                depthwise_vectors=vectors,
                depthwise_columns=columns,
                depthwise_row_columns=_NEON_DEPTHWISE_ROW_COLUMNS,
            )
        return knobs


#: NEON's depthwise tile: 2 channel vectors by 4 pixels. A 3x3 depthwise output takes 9 FMAs
#: and, outside them, a zeroed accumulator, the activation (ReLU's max) and a store, all on
#: the FMA pipes of a Neoverse-N1 / A76 (in LLVM's model a 128-bit store takes two of their
#: slots, and a store of a pair of adjacent vectors the same two). One vector of 8 pixels
#: stores each vector alone: 9 FMAs in 13 slots, 69% of the FMA peak; two adjacent channel
#: vectors store as pairs: 9 in 12, 75%. Four pixels keep the tile's inputs (a row of taps
#: loads 6 pixels x 2 vectors), its 8 accumulators and a row of weights in NEON's 32
#: registers; 8 pixels of 2 vectors spill. The Cortex-A72 (one FMA and one load a cycle)
#: runs either tile at about 85%.
_NEON_DEPTHWISE_TILE = (2, 4)

#: NEON's depthwise pixels on rows that 4 does not divide (MobileNetV2's rows of 7 and 14):
#: 2 vectors by 7 pixels, which divides the row, so that the channel vectors still store as
#: pairs (one vector by 7 pixels stores each alone: 9 FMAs in 13 slots). Its 14 accumulators
#: leave 18 registers: at stride 1 a row of taps loads 9 pixels x 2 vectors, each feeding up
#: to three pixels, and streams them past the accumulators. At stride 2 neighbouring outputs
#: share one input column of three, and holding the shared ones across a row of taps for all
#: 7 pixels needs a register or two more than the 32 (Cortex-A72 / A76 scheduling spills);
#: running each pixel's 9 taps in turn instead keeps the 18 weight vectors, the pixel's 2
#: accumulators and its inputs live, and nothing spills.
_NEON_DEPTHWISE_ROW_COLUMNS = 7


@dataclass
class _Conv:
    """What the rule needs to know of an NHWC conv block."""

    main: SBlockRV
    data_pos: int
    depthwise: bool
    pointwise: bool  # 1x1, stride 1, no padding: the pixel axis can be flattened
    unit_stride: bool


def find_nhwc_conv(sch: s_tir.Schedule) -> _Conv:
    """The NHWC conv2d block of the function (dense or depthwise); raises when there is none."""
    main = find_conv2d_iteration(sch, "NHWC")
    stmt = sch.get(main)
    _, y, x, f, ry, rx, rc = (iv.var for iv in stmt.iter_vars)
    data_pos = None
    for pos, read in enumerate(stmt.reads):
        region = [r.min for r in read.region]
        if len(region) == 4 and y in free_vars(region[1]) and x in free_vars(region[2]):
            data_pos = pos
    if data_pos is None:
        raise NotApplicable("no input indexed by output rows and columns")
    data = [r.min for r in stmt.reads[data_pos].region]
    weight = [r.min for r in stmt.reads[1 - data_pos].region]
    if len(weight) != 4 or not all(
        w.same_as(v) for w, v in zip(weight, (ry, rx, rc, f), strict=True)
    ):
        raise NotApplicable("weight is not indexed [ry, rx, rc, f] (HWIO)")
    extents = [int(iv.dom.extent) if isinstance(iv.dom.extent, tirx.IntImm) else None
               for iv in stmt.iter_vars]  # fmt: skip
    if isinstance(data[3], tirx.Var) and data[3].same_as(rc):
        depthwise = False
    elif extents[6] == 1 and free_vars(data[3]) == {f, rc}:
        depthwise = True  # channel f + rc with rc of extent 1: one input channel per output
    else:
        raise NotApplicable("grouped conv other than depthwise")
    shapes = (stmt.reads[data_pos].source.shape, stmt.writes[0].source.shape)
    if not all(isinstance(d, tirx.IntImm) for shape in shapes for d in shape):
        raise NotApplicable("symbolic shape (the tiles are sized from static extents)")
    in_shape, out_shape = ([int(d) for d in shape] for shape in shapes)
    unit_stride = _unit_stride(data, y, x)
    pointwise = (
        not depthwise
        and extents[4] == 1
        and extents[5] == 1
        and in_shape[1:3] == out_shape[1:3]
        and unit_stride
    )
    return _Conv(main, data_pos, depthwise, pointwise, unit_stride)


def _unit_stride(data: list[tirx.PrimExpr], y: tirx.Var, x: tirx.Var) -> bool:
    """Whether the data index moves one row / column per output row / column."""
    return all(linear_stride(index, var) == 1 for index, var in ((data[1], y), (data[2], x)))


def _tile(columns: int | None, vectors: int, knobs: Conv2dNHWCKnobs) -> tuple[int, int]:
    """``(vecs, cols)``: the most accumulators within budget, ``vecs`` dividing ``vectors`` and
    ``cols`` dividing ``columns``; among equal counts the fewest loads per step."""
    best, best_key = (1, 1), (0, 0)
    registers = 16 if knobs.vector_lanes == 8 else 32
    for vecs in range(min(knobs.channel_vectors, vectors), 0, -1):
        if vectors % vecs:
            continue
        budget = knobs.accumulators
        if vecs == vectors:
            # a tile of all the output channels (32 of them: the stem of a half-width ResNet)
            # may fill the register file but for its weight vectors and two spare, where the
            # budget alone would leave registers idle (2 x 8 pixels, not 2 x 14)
            budget = max(budget, registers - vecs - 2)
        limit = max(budget // vecs, 1)
        cols = max(
            (c for c in range(1, limit + 1) if columns is None or columns % c == 0), default=1
        )
        key = (vecs * cols, -(vecs + cols))
        if key > best_key:
            best, best_key = (vecs, cols), key
    return best


def _default_tile(
    conv: _Conv, columns: int | None, vectors: int, knobs: Conv2dNHWCKnobs
) -> tuple[int, int]:
    if conv.depthwise:
        # the knobs' tile, or one vector by NHWC_DEPTHWISE_COLUMNS pixels where the row
        # divides into fewer pixels (7 or 14: 2 x 1 or 2 x 2 would leave the FMAs idle), or
        # the knobs' vectors by depthwise_row_columns pixels there
        vecs = max(v for v in range(1, knobs.depthwise_vectors + 1) if vectors % v == 0)
        tiles = [
            (vecs, pick_factor(columns, knobs.depthwise_columns)),
            (1, pick_factor(columns, NHWC_DEPTHWISE_COLUMNS)),
        ]
        if _short_row(columns, knobs):
            tiles.append((vecs, pick_factor(columns, knobs.depthwise_row_columns)))
        return max(tiles, key=lambda t: (t[0] * t[1], t[0]))
    return _tile(columns, vectors, knobs)


def _short_row(columns: int | None, knobs: Conv2dNHWCKnobs) -> bool:
    """Whether a depthwise row takes ``depthwise_row_columns`` (``depthwise_columns`` does
    not divide it)."""
    return bool(knobs.depthwise_row_columns) and (columns or 0) % knobs.depthwise_columns != 0


def _row_tasks(
    sch: s_tir.Schedule, main: SBlockRV, weight_pos: int, knobs: Conv2dNHWCKnobs
) -> bool:
    """Whether a dense conv's parallel tasks put rows outside (``Conv2dNHWCKnobs.row_tasks``):
    by default where the input is at least as large as the weights (ResNet-18's 1x1
    downsampling convs, not its 3x3 convs of 256 channels, whose weights are 12 times their
    input), so that each core reads its share of the larger operand."""
    if knobs.row_tasks >= 0:
        return bool(knobs.row_tasks)
    reads = sch.get(main).reads
    data, weight = reads[1 - weight_pos].source, reads[weight_pos].source
    return math.prod(int(d) for d in data.shape) >= math.prod(int(d) for d in weight.shape)


def _pads(sch: s_tir.Schedule, block: SBlockRV) -> bool:
    stmt = sch.get(block)
    out = [int(d) for d in stmt.writes[0].source.shape]
    return any([int(d) for d in r.source.shape] != out for r in stmt.reads)


def _sample_knobs(
    sampler: KnobSampler,
    conv: _Conv,
    columns: int | None,
    vectors: int,
    in_channels: int | None,
    knobs: Conv2dNHWCKnobs,
    rows_first: bool,
) -> Conv2dNHWCKnobs:
    """``knobs`` with the tile, the channel blocks (and the pixels accumulated over them), the
    weight packing and the task order (``rows_first`` the default) drawn by ``sampler``; for
    depthwise convs, rows and pixels per task and padding.

    Tiles: ``vecs`` dividing the channel vectors by ``cols`` dividing the pixels, within the
    register file next to the operands, the default tile first. Channel blocks: divisors of
    the input channels (0: none).
    """
    registers = (16 if knobs.vector_lanes == 8 else 32) - 4
    default_vecs, default_cols = _default_tile(conv, columns, vectors, knobs)
    divisors = [v for v in range(1, min(vectors, 8) + 1) if vectors % v == 0]
    vecs = sampler("tile_vectors", default_vecs, divisors)
    fitting = [
        c
        for c in range(16, 0, -1)
        if vecs * c <= registers and (columns is None or columns % c == 0)
    ]
    first = default_cols if vecs == default_vecs else (fitting or [1])[0]
    cols = sampler("tile_columns", first, fitting)
    knobs = replace(knobs, tile_vectors=vecs, tile_columns=cols)
    if conv.depthwise:
        default_rows = nhwc_depthwise_rows(knobs.depthwise_rows, conv.unit_stride)
        rows = sampler("depthwise_rows", default_rows, [1, 2, 4, 8])
        pixels = sampler("depthwise_pixels", knobs.depthwise_pixels, [8, 16, 32])
        pad = sampler("pad_in_tile", int(knobs.pad_in_tile), [0, 1])
        return replace(knobs, depthwise_rows=rows, depthwise_pixels=pixels, pad_in_tile=bool(pad))
    blocks = [
        b for b in (0, 8, 16, 32, 64) if b == 0 or (in_channels or 0) > b and in_channels % b == 0
    ]
    block = sampler("channel_block", knobs.channel_block, blocks)
    row_pixels = knobs.row_pixels
    if block:
        row_pixels = sampler("row_pixels", knobs.row_pixels, [28, 56, 224, 448])
        prefetch = sampler("prefetch_pixels", knobs.prefetch_pixels, [0, 256])
        knobs = replace(knobs, prefetch_pixels=prefetch)
    pack = sampler("pack_weights", int(knobs.pack_weights), [0, 1])
    row_tasks = sampler("row_tasks", int(rows_first), [0, 1])
    return replace(
        knobs,
        channel_block=block,
        row_pixels=row_pixels,
        pack_weights=bool(pack),
        row_tasks=row_tasks,
    )


class Conv2dNHWC(CPUScheduleRule):
    """Direct NHWC conv2d (dense or depthwise) in register tiles of channel vectors by pixels."""

    knobs_type = Conv2dNHWCKnobs
    samples_knobs = True

    def schedule(
        self,
        sch: s_tir.Schedule,
        target: Target,
        knobs: Conv2dNHWCKnobs,
        sampler: KnobSampler | None = None,
    ) -> s_tir.Schedule:
        conv = find_nhwc_conv(sch)
        main = conv.main
        pads = []
        for producer in sch.get_producers(main):
            if _pads(sch, producer):
                pads.append(producer)
            else:
                sch.compute_inline(producer)
        if len(pads) > 1:
            raise NotApplicable("more than one padding stage")
        if conv.pointwise and not pads:
            width = loop_extent(sch, sch.get_loops(main)[2])
            # one pixel axis p = y * W + x: tiles run across row ends
            sch.transform_block_layout(
                main, lambda n, y, x, f, ry, rx, rc: (n, y * width + x, f, ry, rx, rc)
            )
        loops = sch.get_loops(main)
        f = loops[-4]
        channels = loop_extent(sch, f)
        lanes = vector_width(channels, knobs.vector_lanes)
        if channels is None or (lanes < 4 and not conv.depthwise):
            raise NotApplicable("output channels are not whole vectors of 4 or more lanes")
        columns = loop_extent(sch, loops[-5])
        vectors = channels // lanes
        if sampler is not None:
            in_channels = loop_extent(sch, loops[-1])
            rows_first = not conv.depthwise and _row_tasks(sch, main, 1 - conv.data_pos, knobs)
            knobs = _sample_knobs(sampler, conv, columns, vectors, in_channels, knobs, rows_first)
        if knobs.tile_vectors and knobs.tile_columns:
            vecs = max(v for v in range(1, knobs.tile_vectors + 1) if vectors % v == 0)
            cols = pick_factor(columns, knobs.tile_columns)
        else:
            vecs, cols = _default_tile(conv, columns, vectors, knobs)
        cores = num_cores(target)
        if conv.depthwise:
            rows = nhwc_depthwise_rows(knobs.depthwise_rows, conv.unit_stride)
            shape = (vecs, cols, rows)
            outside = not conv.unit_stride and _short_row(columns, knobs)
            tile = schedule_depthwise_nhwc(
                sch, main, shape, lanes, knobs.depthwise_pixels, cores, outside
            )
        else:
            tile = self._dense(sch, main, 1 - conv.data_pos, vecs, cols, lanes, knobs, cores)
        for pad in pads:
            if knobs.pad_in_tile and conv.depthwise:
                sch.compute_at(pad, tile, preserve_unit_loops=True)
                inner = sch.get_loops(pad)[-1]
                inner_lanes = vector_width(loop_extent(sch, inner), knobs.vector_lanes)
                sch.vectorize(sch.split(inner, [None, inner_lanes])[1])
            else:
                schedule_spatial_block(sch, pad, FallbackKnobs(vector_lanes=knobs.vector_lanes))
        return sch

    @staticmethod
    def _dense(
        sch: s_tir.Schedule,
        main: SBlockRV,
        weight_pos: int,
        vecs: int,
        cols: int,
        lanes: int,
        knobs: Conv2dNHWCKnobs,
        cores: int,
    ) -> LoopRV:
        *spatial, f, ry, rx, rc = sch.get_loops(main)
        x = spatial[-1]
        nr = vecs * lanes
        # parallel tasks by rows: each core reads its share of the input (the rows the
        # kernel before it wrote from the same core, in its L2) and all the weights; by
        # channel tiles: all the input and its share of the weights
        row_tasks = _row_tasks(sch, main, weight_pos, knobs)
        packed_name = None
        if knobs.pack_weights and (loop_extent(sch, f) or 0) > nr:
            packed = pack_weight(
                sch, main, weight_pos, lambda h, w, i, o: (o // nr, i, h, w, o % nr)
            )
            packed_name = sch.get(packed).writes[0].source.name
        fo, fv, fl = sch.split(f, [None, vecs, lanes])
        outer = spatial[:-1]  # (n, y), or (n,) once the pixels are flattened
        in_channels = loop_extent(sch, rc)
        width = loop_extent(sch, x)
        block = knobs.channel_block
        if block and in_channels and in_channels > block and in_channels % block == 0 and width:
            # a row of output pixels (a chunk of the flattened ones) accumulates in a buffer
            # over blocks of input channels: the weights of one block (KH x KW x block x nr)
            # stay in L1 while every tile of the row reads them, where without blocks each
            # tile streamed all the weights from L2 for its few pixels
            chunk = pick_factor(width // cols, max(knobs.row_pixels // cols, 1)) * cols
            xc, xo, xi = sch.split(x, [None, chunk // cols, cols])
            rco, rci = sch.split(rc, [None, block])
            rows = []
            if len(outer) > 1 and chunk == width:
                # short rows (7 or 14 pixels): several of them share each weight block, which
                # is then streamed from memory once per chunk of the image, not once per row
                others = loop_extent(sch, fo) * (loop_extent(sch, outer[0]) or 1)
                rows_per_chunk = balanced_split(
                    loop_extent(sch, outer[-1]), knobs.row_pixels // width, others, cores
                )
                yo, yr = sch.split(outer[-1], [None, rows_per_chunk])
                outer, rows = [*outer[:-1], yo], [yr]
            tasks = [*outer, xc, fo] if row_tasks else [outer[0], fo, *outer[1:], xc]
            sch.reorder(*tasks, rco, *rows, xo, rci, ry, rx, xi, fv, fl)
            tile = sch.fuse(*tasks)
            pixels = chunk * (loop_extent(sch, rows[0]) if rows else 1)
            if packed_name and pixels <= knobs.prefetch_pixels:
                # each block of input channels reads the next contiguous chunk of the packed
                # weights: fetch it from memory while the block before it computes
                sch.annotate(rco, PREFETCH_ATTR, packed_name)
            first_reduction = rco
        else:
            xo, xi = sch.split(x, [None, cols])
            tasks = [*outer, xo, fo] if row_tasks else [outer[0], fo, *outer[1:], xo]
            sch.reorder(*tasks, rc, ry, rx, xi, fv, fl)
            tile = sch.fuse(*tasks)
            first_reduction = rc
        sch.parallel(tile)
        finish_register_tile(sch, main, tile, (xi, fv, fl), first_reduction, lanes)
        return tile
