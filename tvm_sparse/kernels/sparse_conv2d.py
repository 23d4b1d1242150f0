"""Sparse convolution as im2col followed by the BSR matmul.

A pruned ``OIHW`` weight flattens to ``(O, I*kh*kw)``, the orientation
:func:`~tvm_sparse.passes.detect_sparsity.analyze_weight` reads. For a ``1x1`` convolution
with stride 1 and no padding, ``NCHW`` activations already are the transposed activation
matrix ``(B, I, H*W)``, so the BSR kernel (``"m"`` variant, ``x_layout="KM"``,
``y_layout="NM"``) runs on them directly and writes ``NCHW`` output. Larger kernels first go
through :func:`im2col`, which writes ``(B, I*kh*kw, OH*OW)`` (zero padding folded in).
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, te, tirx

__all__ = ["Conv2DGeometry", "im2col"]


@dataclass(frozen=True)
class Conv2DGeometry:
    """Static shape facts of an ``NCHW`` / ``OIHW`` convolution."""

    batch: int
    channels: int
    height: int
    width: int
    kernel: tuple[int, int]
    strides: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, left, bottom, right
    dilation: tuple[int, int]

    @property
    def out_hw(self) -> tuple[int, int]:
        kh, kw = self.kernel
        (sh, sw), (dh, dw) = self.strides, self.dilation
        top, left, bottom, right = self.padding
        oh = (self.height + top + bottom - dh * (kh - 1) - 1) // sh + 1
        ow = (self.width + left + right - dw * (kw - 1) - 1) // sw + 1
        return oh, ow

    def as_array(self):
        import numpy as np

        return np.array([*self.kernel, *self.strides, *self.padding[:2], *self.dilation], "int32")

    @property
    def is_pointwise(self) -> bool:
        """A 1x1, stride-1, unpadded convolution: a plain matmul over ``NCHW``."""
        return self.kernel == (1, 1) and self.strides == (1, 1) and not any(self.padding)


def im2col(geom: Conv2DGeometry, dtype: str = "float32") -> tirx.PrimFunc:
    """A scheduled PrimFunc ``(x: (B, C, H, W)) -> (B, C*kh*kw, OH*OW)`` (im2col, ``KM``).

    Built block-structured (TE, then a parallel outer loop) since Relax passes such as
    ``RewriteDataflowReshape`` inspect single-input ``call_tir`` callees for blocks.
    """
    b, c, h, w = geom.batch, geom.channels, geom.height, geom.width
    kh, kw = geom.kernel
    sh, sw = geom.strides
    dh, dw = geom.dilation
    top, left = geom.padding[0], geom.padding[1]
    oh, ow = geom.out_hw
    x = te.placeholder((b, c, h, w), dtype, name="x")

    def value(bi, row, pos):
        iy = pos // ow * sh + row % (kh * kw) // kw * dh - top
        ix = pos % ow * sw + row % kw * dw - left
        inside = tirx.all(iy >= 0, iy < h, ix >= 0, ix < w)
        return tirx.if_then_else(
            inside,
            x[
                bi,
                row // (kh * kw),
                tirx.max(tirx.min(iy, h - 1), 0),
                tirx.max(tirx.min(ix, w - 1), 0),
            ],
            tirx.const(0, dtype),
        )

    col = te.compute((b, c * kh * kw, oh * ow), value, name="im2col")
    sch = s_tir.Schedule(te.create_prim_func([x, col]))
    block = sch.get_sblock("im2col")
    bi, row, _ = sch.get_loops(block)
    sch.parallel(sch.fuse(bi, row))
    return (
        sch.mod["main"]
        .with_attrs({"tirx.is_scheduled": True, "tvm_sparse.kernel": "im2col", "op_pattern": 8})
        .without_attr("global_symbol")
    )
