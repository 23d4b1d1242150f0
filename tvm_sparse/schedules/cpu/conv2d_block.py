"""Reading a conv2d block, NCHW or NHWC: its iteration space and the strides of its indices,
for the conv rules (:class:`~.conv2d.Conv2d`, :class:`~.conv2d_nhwc.Conv2dNHWC`).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.schedule import SBlockRV
from tvm.sym.pattern import detect_linear_equation

from .base import NotApplicable, single_reduction_block

__all__ = ["find_conv2d_iteration", "linear_stride"]


def find_conv2d_iteration(sch: s_tir.Schedule, layout: str) -> SBlockRV:
    """The single reduction block of a conv2d in ``layout`` (``"NCHW"``, ``"NHWC"``): four
    spatial iterators, the output's axes in its order, then three reduction iterators, over two
    operands. Raises :class:`NotApplicable` when the function has no such block."""
    main = single_reduction_block(sch)
    stmt = sch.get(main)
    kinds = "".join(
        "R" if iv.iter_type == tirx.IterVar.CommReduce else "S" for iv in stmt.iter_vars
    )
    if kinds != "SSSSRRR" or len(stmt.reads) != 2 or len(stmt.writes) != 1:
        raise NotApplicable(f"not an {layout} conv2d iteration space")
    axes = [iv.var for iv in stmt.iter_vars[:4]]
    out_idx = [r.min for r in stmt.writes[0].region]
    if len(out_idx) != 4 or any(not i.same_as(v) for i, v in zip(out_idx, axes, strict=True)):
        raise NotApplicable(f"output is not indexed [{', '.join(layout.lower())}]")
    return main


def linear_stride(index: tirx.PrimExpr, var: tirx.Var) -> int | None:
    """The constant coefficient of ``var`` in ``index``, or ``None`` when ``index`` is not
    linear in ``var`` with a constant coefficient."""
    coeffs = detect_linear_equation(index, [var])
    if len(coeffs) == 2 and isinstance(coeffs[0], tirx.IntImm):
        return int(coeffs[0].value)
    return None
