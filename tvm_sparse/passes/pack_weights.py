"""PackWeights: move the weight layout rewrites of scheduled kernels to compile time."""

from __future__ import annotations

import tvm
from tvm import relax, s_tir, tirx

from ..schedules.cpu.base import LAYOUT_REWRITE_ATTR, iter_stmts

__all__ = ["PackWeights"]


@tvm.transform.module_pass(opt_level=0, name="PackWeights")
class PackWeights:
    """Split each kernel's weight-packing stage into its own call and fold it on constants.

    A schedule rule that wants a weight in a packed layout (``Conv2d``: ``OIHW`` to
    ``OIHW16o``) reads it through a copy block annotated ``meta_schedule.layout_rewrite_preproc``.
    ``SplitLayoutRewritePreproc`` lifts that block into a separate PrimFunc called on the weight,
    ``FoldConstant`` runs it once at compile time when the weight is a constant, and dead-code
    elimination drops the then unused packing function. Without this pass the kernels are still
    correct: they repack on every call.

    Before::

        R.call_tir(fused_conv2d_add_relu, (x, metadata["w"], b))   # packs w inside

    After::

        R.call_tir(fused_conv2d_add_relu_prepacked, (x, metadata["w_packed"], b))

    Goes after ``ApplySchedules`` (and the kernel report) in a Relax pipeline, inside
    ``with target:``.
    """

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        others = {
            gvar: func
            for gvar, func in mod.functions_items()
            if isinstance(func, tirx.PrimFunc) and not _rewrites_layout(func)
        }
        if len(others) == sum(isinstance(f, tirx.PrimFunc) for _, f in mod.functions_items()):
            return mod
        # SplitLayoutRewritePreproc requires every PrimFunc to have a root block, which the
        # hand-written sparse kernels do not: hide them while it runs.
        split = mod.clone()
        for gvar in others:
            del split[gvar]
        split = relax.transform.SplitLayoutRewritePreproc()(split)
        for gvar, func in others.items():
            split[gvar] = func
        return tvm.transform.Sequential(
            [relax.transform.FoldConstant(), relax.transform.DeadCodeElimination()]
        )(split)


def _rewrites_layout(func: tirx.PrimFunc) -> bool:
    return any(
        isinstance(node, s_tir.SBlock) and LAYOUT_REWRITE_ATTR in node.annotations
        for node in iter_stmts(func.body)
    )
