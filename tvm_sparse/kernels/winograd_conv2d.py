"""Winograd F(2x2, 3x3) convolution for NHWC inputs on CPUs, with a fused epilogue.

A 3x3 stride-1 conv computes each 2x2 block of output pixels from a 4x4 patch of input. In
the Winograd domain (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks",
2016) that is 16 elementwise products per channel pair instead of 36 multiplies::

    Y = A^T [ sum_c (G g_cf G^T) * (B^T d_c B) ] A

``G g G^T`` (the weight, ``[16, C, F]``) is computed at compile time; ``B^T d B`` (the input
tile) and ``A^T m A`` (the output tile) are additions only. The sum over input channels is
16 independent GEMMs, ``[tiles, C] x [C, F]``: 2.25x fewer FLOPs than the direct conv.

The kernel is one parallel loop over chunks of tiles. Each task transforms its chunk of input
tiles into a buffer of ``16 x tiles x C`` (in L2), runs the 16 GEMMs on it in register tiles of
``tile_rows`` tiles by ``tile_vectors`` output-channel vectors (the transformed weights read
as ``[16, F / nr, C, nr]`` panels), and transforms the products back into 2x2 output pixels,
adding bias and residual and applying ReLU there, so that nothing in between goes to memory.

Before::

    y = relu(conv2d(x, w, padding=1) + bias + residual)      # NHWC, HWIO

After::

    for task in T.parallel(tasks):                           # a chunk of 2x2 output tiles
        v[16, tiles, C] = B^T d B                            # each tile of the padded input
        for fo, e, tile_block in T.grid(F // nr, 16, tiles // mr):
            acc[mr, nr] = sum_c v[e, tile_block, c] * u[e, fo, c, :]
        y[2x2 pixels, fo * nr : ...] = relu(A^T m A + bias + residual)

The PrimFunc comes out already scheduled (``tirx.is_scheduled``), like the sparse kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import tirx
from tvm.script import tirx as T
from tvm.target import Target

from ..targets.facts import vector_lanes
from .kernel_cache import cached_kernel

__all__ = [
    "KERNEL_NAME",
    "WinogradKnobs",
    "winograd_applies",
    "winograd_conv2d",
    "winograd_weight",
]

#: Weight transform G of F(2x2, 3x3). The kernel computes B^T d B with
#: B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]] and A^T m A with
#: A^T = [[1, 1, 1, 0], [0, 1, -1, -1]] as the additions they are.
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype="float64")

#: Bytes of the per-task buffers (transformed inputs and products) at most: one core's L2.
_TASK_BYTES = 1 << 20

KERNEL_NAME = "winograd_conv2d"


@dataclass(frozen=True)
class WinogradKnobs:
    """Knobs of the Winograd kernel.

    Attributes
    ----------
    lanes : int
        fp32 lanes of one SIMD register.
    tile_rows : int
        Tiles per register tile of the GEMMs (``mr``); the tiles per task are a multiple.
        0: as many as make 16 accumulators with the tile's vectors, up to 8 (more tiles per
        weight panel load, while the accumulators still leave registers for the operands).
    tile_vectors : int
        Most output-channel vectors per register tile (``nr / lanes``; a divisor of the
        output channel vectors is used).
    tiles_per_task : int
        2x2 output tiles per parallel task (a multiple of ``tile_rows``); 0 picks the chunk
        that splits the tiles most evenly over the cores, up to 32 tiles.
    """

    lanes: int = 16
    tile_rows: int = 0
    tile_vectors: int = 4
    tiles_per_task: int = 0

    @classmethod
    def for_target(cls, target: Target) -> WinogradKnobs:
        """Defaults for ``target``: 4 x 4 accumulators of 32 SIMD registers (AVX-512, NEON),
        4 x 2 of AVX2's 16."""
        lanes = vector_lanes(target)
        return cls(lanes=lanes, tile_vectors=2 if lanes == 8 else 4)

    def output_vectors(self, out_channels: int) -> int:
        """Output-channel vectors per register tile for ``out_channels``."""
        vectors = out_channels // self.lanes
        return max(v for v in range(1, self.tile_vectors + 1) if vectors % v == 0)

    def rows(self, out_channels: int) -> int:
        """``mr``: tiles per register tile for ``out_channels``."""
        return self.tile_rows or min(16 // self.output_vectors(out_channels), 8)

    def task_tiles(self, tiles: int, in_channels: int, mr: int, nr: int, cores: int) -> int:
        """Tiles per task: ``tiles_per_task``, or the multiple of ``tile_rows`` (within the
        buffer budget) whose tasks finish soonest on ``cores`` (``ceil(tasks / cores)`` chunks
        each), the largest within 5%. 196 tiles (28x28 pixels) in 7 tasks of 28 kept one of two
        cores idle a seventh of the time; 10 tasks of 20 do not."""
        if self.tiles_per_task:
            return max(self.tiles_per_task // mr, 1) * mr
        per_tile = 16 * 4 * (in_channels + nr)
        most = max(min(32, _TASK_BYTES // per_tile) // mr, 1) * mr
        spans = {}
        for chunk in range(mr, most + 1, mr):
            tasks = -(-tiles // chunk)
            spans[chunk] = -(-tasks // cores) * chunk
        # the largest chunk within 5% of the shortest span: fewer, longer tasks
        shortest = min(spans.values())
        return max(chunk for chunk, span in spans.items() if span <= 1.05 * shortest)


def winograd_applies(
    in_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    lanes: int,
    *,
    strides=(1, 1),
    padding=(1, 1, 1, 1),
    dilation=(1, 1),
    groups: int = 1,
) -> str | None:
    """Why a conv of an NHWC input and an HWIO weight cannot run as this kernel, or None when
    it can. The one test of eligibility: the pass, the layout pass and the cost model ask it."""
    if int(groups) != 1 or any(int(v) != 1 for v in [*strides, *dilation, *padding]):
        return "not a dense stride-1, padding-1 conv"
    if len(in_shape) != 4 or in_shape[0] != 1:
        return "Winograd kernel takes batch 1"
    _, h, w, c = in_shape
    kh, kw, wc, f = weight_shape
    if (kh, kw) != (3, 3) or wc != c:
        return "not a 3x3 dense conv"
    if h % 2 or w % 2:
        return "odd output size: Winograd tiles are 2x2 pixels"
    if c % lanes or f % lanes:
        return f"channels are not whole vectors of {lanes}"
    return None


def winograd_weight(weight_hwio: np.ndarray, nr: int) -> np.ndarray:
    """``G g G^T`` of an HWIO 3x3 weight as ``[16, F / nr, C, nr]`` panels (float32)."""
    _, _, c, f = weight_hwio.shape
    u = np.einsum("ai,ijcf,bj->abcf", _G, weight_hwio.astype("float64"), _G)
    u = u.reshape(16, c, f // nr, nr).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(u, dtype="float32")


@cached_kernel
def winograd_conv2d(
    height: int,
    width: int,
    in_channels: int,
    out_channels: int,
    *,
    knobs: WinogradKnobs,
    cores: int,
    residual: bool = False,
    relu: bool = False,
    dtype: str = "float32",
) -> tirx.PrimFunc:
    """The scheduled PrimFunc ``y = [relu](conv3x3(x) + bias [+ residual])``.

    Arguments, in order: the input ``[1, H, W, C]`` (padded by one pixel inside the kernel),
    the :func:`winograd_weight` panels ``[16, F / nr, C, nr]``, the bias ``[F]``, the residual
    ``[1, H, W, F]`` when ``residual``, and the output ``[1, H, W, F]``.
    """
    lanes = knobs.lanes
    if height % 2 or width % 2 or in_channels % lanes or out_channels % lanes:
        raise ValueError(
            f"Winograd conv needs even output sizes and channels in vectors of {lanes}, got "
            f"{height}x{width}, {in_channels} -> {out_channels}"
        )
    tw_count = width // 2
    tiles = height // 2 * tw_count
    nv = knobs.output_vectors(out_channels)
    nr, mr = nv * lanes, knobs.rows(out_channels)
    tb = knobs.task_tiles(tiles, in_channels, mr, nr, cores)
    tasks = -(-tiles // tb)
    cv_count, fo_count, rb_count = in_channels // lanes, out_channels // nr, tb // mr
    c_count = in_channels
    zero = tirx.const(0, dtype)

    def epilogue(value, bias, res, th, tw, a, b, f):
        # bias, residual add and ReLU of output pixel (2 th + a, 2 tw + b), channel f
        value = value + bias[f]
        if residual:
            value = value + res[0, 2 * th + a, 2 * tw + b, f]
        if relu:
            value = T.max(value, zero)
        return value

    def pixel(x, th, tw, i, j, c):
        # input pixel (i, j) of tile (th, tw), zero in the one-pixel padding around the image
        row, col = 2 * th + i - 1, 2 * tw + j - 1
        inside = tirx.all(row >= 0, row < height, col >= 0, col < width)
        clamped = x[0, T.max(T.min(row, height - 1), 0), T.max(T.min(col, width - 1), 0), c]
        # Bound outside the select: a select evaluates both sides, and the simplifier would
        # drop the clamp of a load inside its true side (given the condition), leaving a load
        # before the image at the padding.
        value = tirx.Var("pixel", dtype)
        return tirx.Let(value, clamped, T.Select(inside, value, zero))

    @T.macro
    def input_transform(x, vb, task):
        # B^T d B of each tile: rows of the 4x4 patch first, then columns
        d = T.alloc_buffer((4, 4, lanes), dtype)
        for i in range(tb):
            t = T.min(task * tb + i, tiles - 1)  # a last chunk's spare tiles repeat the last
            th = t // tw_count
            tw = t % tw_count
            for cv in range(cv_count):
                for j in T.unroll(4):
                    for l in T.vectorized(lanes):
                        d[0, j, l] = pixel(x, th, tw, 0, j, cv * lanes + l) - pixel(
                            x, th, tw, 2, j, cv * lanes + l
                        )
                    for l in T.vectorized(lanes):
                        d[1, j, l] = pixel(x, th, tw, 1, j, cv * lanes + l) + pixel(
                            x, th, tw, 2, j, cv * lanes + l
                        )
                    for l in T.vectorized(lanes):
                        d[2, j, l] = pixel(x, th, tw, 2, j, cv * lanes + l) - pixel(
                            x, th, tw, 1, j, cv * lanes + l
                        )
                    for l in T.vectorized(lanes):
                        d[3, j, l] = pixel(x, th, tw, 1, j, cv * lanes + l) - pixel(
                            x, th, tw, 3, j, cv * lanes + l
                        )
                for a in T.unroll(4):
                    for l in T.vectorized(lanes):
                        vb[a * 4, i, cv * lanes + l] = d[a, 0, l] - d[a, 2, l]
                    for l in T.vectorized(lanes):
                        vb[a * 4 + 1, i, cv * lanes + l] = d[a, 1, l] + d[a, 2, l]
                    for l in T.vectorized(lanes):
                        vb[a * 4 + 2, i, cv * lanes + l] = d[a, 2, l] - d[a, 1, l]
                    for l in T.vectorized(lanes):
                        vb[a * 4 + 3, i, cv * lanes + l] = d[a, 1, l] - d[a, 3, l]

    @T.macro
    def products(u, vb, mb, fo):
        # 16 GEMMs [tb, C] x [C, nr] in register tiles of mr tiles x nv vectors
        for e in range(16):
            for rb in range(rb_count):
                # the default "global" scope keeps a tile under 1 KB on the stack, in registers
                # (schedules.cpu.base.TILE_SCOPE)
                acc = T.alloc_buffer((mr, nr), dtype)
                for r in T.unroll(mr):
                    for v in T.unroll(nv):
                        for l in T.vectorized(lanes):
                            acc[r, v * lanes + l] = zero
                for c in range(c_count):
                    for r in T.unroll(mr):
                        for v in T.unroll(nv):
                            for l in T.vectorized(lanes):
                                acc[r, v * lanes + l] = (
                                    acc[r, v * lanes + l]
                                    + vb[e, rb * mr + r, c] * u[e, fo, c, v * lanes + l]
                                )
                for r in T.unroll(mr):
                    for v in T.unroll(nv):
                        for l in T.vectorized(lanes):
                            mb[e, rb * mr + r, v * lanes + l] = acc[r, v * lanes + l]

    @T.macro
    def output_transform(mb, bias, res, y, task, fo):
        # A^T m A of each tile: s = A^T m (2 x 4), then the two columns of s A
        s = T.alloc_buffer((2, 4, lanes), dtype)
        for i in range(tb):
            if task * tb + i < tiles:
                th = (task * tb + i) // tw_count
                tw = (task * tb + i) % tw_count
                for v in range(nv):
                    for b in T.unroll(4):
                        for l in T.vectorized(lanes):
                            s[0, b, l] = (
                                mb[b, i, v * lanes + l]
                                + mb[4 + b, i, v * lanes + l]
                                + mb[8 + b, i, v * lanes + l]
                            )
                        for l in T.vectorized(lanes):
                            s[1, b, l] = (
                                mb[4 + b, i, v * lanes + l]
                                - mb[8 + b, i, v * lanes + l]
                                - mb[12 + b, i, v * lanes + l]
                            )
                    for a in T.unroll(2):
                        for l in T.vectorized(lanes):
                            y[0, 2 * th + a, 2 * tw, fo * nr + v * lanes + l] = epilogue(
                                s[a, 0, l] + s[a, 1, l] + s[a, 2, l],
                                bias, res, th, tw, a, 0, fo * nr + v * lanes + l,
                            )  # fmt: skip
                            y[0, 2 * th + a, 2 * tw + 1, fo * nr + v * lanes + l] = epilogue(
                                s[a, 1, l] - s[a, 2, l] - s[a, 3, l],
                                bias, res, th, tw, a, 1, fo * nr + v * lanes + l,
                            )  # fmt: skip

    @T.macro
    def task_body(x, u, bias, res, y, task):
        vb = T.alloc_buffer((16, tb, in_channels), dtype)
        mb = T.alloc_buffer((16, tb, nr), dtype)
        input_transform(x, vb, task)
        for fo in range(fo_count):
            products(u, vb, mb, fo)
            output_transform(mb, bias, res, y, task, fo)

    image = (1, height, width, in_channels)
    panels = (16, fo_count, in_channels, nr)
    out = (1, height, width, out_channels)
    if residual:

        @T.prim_func(private=True)
        def kernel(
            x: T.Buffer(image, dtype),
            u: T.Buffer(panels, dtype),
            bias: T.Buffer((out_channels,), dtype),
            res: T.Buffer(out, dtype),
            y: T.Buffer(out, dtype),
        ):
            T.func_attr({"tirx.noalias": True})
            for task in T.parallel(tasks):
                task_body(x, u, bias, res, y, task)

    else:

        @T.prim_func(private=True)
        def kernel(
            x: T.Buffer(image, dtype),
            u: T.Buffer(panels, dtype),
            bias: T.Buffer((out_channels,), dtype),
            y: T.Buffer(out, dtype),
        ):
            T.func_attr({"tirx.noalias": True})
            for task in T.parallel(tasks):
                task_body(x, u, bias, None, y, task)

    return kernel.with_attrs(
        {
            "tirx.is_scheduled": True,
            "tvm_sparse.kernel": KERNEL_NAME,
            "tvm_sparse.knobs": {
                "lanes": lanes,
                "tile_rows": mr,
                "tile_vectors": nv,
                "tiles_per_task": tb,
            },
        }
    )
