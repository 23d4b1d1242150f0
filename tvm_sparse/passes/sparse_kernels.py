"""The sparse kernels :class:`~tvm_sparse.passes.RewriteToSparse` emits, per target family.

Given a layer's weight and the :class:`~.sparse_decisions.Plan` chosen for it, an emitter
compresses the weight (BSR or N:M) and builds a kernel already scheduled; the rewrite adds it
to the module and calls it, the same way for every family. CPU kernels apply the layer's bias
and activation as they store (:class:`~tvm_sparse.kernels.epilogue.Epilogue`); the CUDA kernels
of :mod:`tvm_sparse.kernels.gpu` take none and work on ``(1, M, K)`` activations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import tirx
from tvm.target import Target

from ..kernels.bsr_matmul import BSRMatmulKnobs, bsr_matmul
from ..kernels.epilogue import Epilogue
from ..kernels.formats import BSRMatrix, to_bsr, to_nm
from ..kernels.gpu import (
    CUDATileKnobs,
    cuda_bsr_matmul,
    cuda_mma_sp_matmul,
    cuda_nm_matmul,
    mma_sp_kernel_name,
    nm_group_offsets,
    to_mma_sp,
)
from ..kernels.nm_matmul import NMMatmulKnobs, nm_matmul, nm_matmul_weights
from ..kernels.nm_permute import (
    NMPermuteKnobs,
    nm_permute,
    nm_permute_applies,
    nm_permute_weights,
)
from .sparse_decisions import Plan

__all__ = ["CPUSparseKernels", "CUDASparseKernels", "SparseKernel"]

#: The layouts of a conv's kernel: activations ``(batch, K, OH*OW)``, outputs ``(batch, N,
#: OH*OW)``, which are NCHW's without a copy.
_CONV_LAYOUTS = {"x_layout": "KM", "y_layout": "NM"}


@dataclass(frozen=True)
class SparseKernel:
    """A layer's kernel and what its ``call_tir`` needs.

    Parameters
    ----------
    func : tirx.PrimFunc
        The scheduled kernel.
    weights : tuple[np.ndarray, ...]
        The compressed weight arrays it takes after the activations (a bias goes last).
    x_views : tuple[tuple[int, ...], ...]
        Shapes a matmul's activations are reshaped through before the call, in order.
    y_shape : tuple[int, ...]
        The shape of its output.
    flops : int
        Floating-point operations it performs (stored weight values only).
    y_dtype, x_dtype : str
        The element types of its output and of the activations it takes (the caller casts
        activations of another type).
    """

    func: tirx.PrimFunc
    weights: tuple[np.ndarray, ...]
    x_views: tuple[tuple[int, ...], ...]
    y_shape: tuple[int, ...]
    flops: int
    y_dtype: str = "float32"
    x_dtype: str = "float32"


def _bsr_arrays(bsr: BSRMatrix, data: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    return (bsr.data if data is None else data, bsr.indices, bsr.indptr)


class CPUSparseKernels:
    """The CPU kernels (:mod:`tvm_sparse.kernels`), their knobs sized for ``target``."""

    #: The kernels apply the layer's bias and activation in their stores.
    fuses_epilogue = True
    #: Views that keep the shape are left out.
    views_always = False
    #: Element types of the matmuls it has kernels for.
    matmul_dtypes = ("float32",)

    def __init__(self, target: Target) -> None:
        self.bsr_knobs = BSRMatmulKnobs.for_target(target)
        self.nm_knobs = NMMatmulKnobs.for_target(target)
        self.permute_knobs = NMPermuteKnobs.for_target(target)
        self.target = target

    def matmul(self, weight: np.ndarray, m: int, plan: Plan, epilogue: Epilogue) -> SparseKernel:
        """``x (m, k) @ weight.T``; leading batch dims of ``x`` are folded into ``m``."""
        n, k = weight.shape
        permute = plan.nm is not None and nm_permute_applies(self.target, plan.nm, k)
        if permute and plan.variant != "gather":
            knobs = self.permute_knobs
            mat = to_nm(weight, plan.nm, row_multiple=knobs.block)
            func = nm_permute(m, k, n, plan.nm, knobs=knobs, epilogue=epilogue)
            flops = 2 * m * n * (k // plan.nm[1]) * plan.nm[0]
            return SparseKernel(func, nm_permute_weights(mat, knobs), ((m, k),), (m, n), flops)
        if plan.nm is not None:  # asked for, NEON, or inputs not in whole groups
            knobs = self.nm_knobs.resolve(m, n, plan.nm)
            mat = to_nm(weight, plan.nm, row_multiple=knobs.group)
            func = nm_matmul(m, k, n, plan.nm, mat.values.shape[0], knobs=knobs, epilogue=epilogue)
            flops = 2 * m * int(mat.values.size)
            weights = nm_matmul_weights(mat, knobs)
            return SparseKernel(func, weights, ((m, k),), (m, n), flops)
        knobs = self.bsr_knobs.resolve(plan.block, m, n)
        bsr = to_bsr(weight, plan.block, row_multiple=knobs.group, nonempty=True)
        func = bsr_matmul(
            m, k, n, plan.block, bsr.nnzb, bsr.block_rows, knobs=knobs, epilogue=epilogue
        )
        weights = _bsr_arrays(bsr, bsr.data_cr() if knobs.variant == "rows" else None)
        if knobs.variant == "m":  # takes a batch of activation matrices: a batch of one
            views, y_shape = ((m, k), (1, m, k)), (1, m, n)
        else:
            views, y_shape = ((m, k),), (m, n)
        return SparseKernel(func, weights, views, y_shape, 2 * m * int(bsr.data.size))

    def conv2d(
        self, weight: np.ndarray, batch: int, hw: int, plan: Plan, epilogue: Epilogue
    ) -> SparseKernel:
        """The BSR kernel of an NCHW conv, its weight flattened to ``(O, I*KH*KW)``, on the
        ``(batch, I*KH*KW, OH*OW)`` columns of its activations."""
        n, k = weight.shape
        knobs = self.bsr_knobs.resolve(plan.block, hw, n, batch=batch, k=k, **_CONV_LAYOUTS)
        bsr = to_bsr(weight, plan.block, row_multiple=knobs.group, nonempty=True)
        func = bsr_matmul(hw, k, n, plan.block, bsr.nnzb, bsr.block_rows, knobs=knobs,
                          epilogue=epilogue, batch=batch, **_CONV_LAYOUTS)  # fmt: skip
        flops = 2 * batch * hw * int(bsr.data.size)
        return SparseKernel(func, _bsr_arrays(bsr), (), (batch, n, hw), flops)


class CUDASparseKernels:
    """The CUDA kernels (:mod:`tvm_sparse.kernels.gpu`) with their default tiles.

    ``dtype`` is the model's compute dtype. The BSR and N:M kernels are fp32 (values,
    activations and accumulators) whatever it is: ``ConvertComputeDtype``, which runs after
    ``RewriteToSparse``, keeps a ``call_tir`` as it is and casts an fp16 model's activations at
    its edges. The 2:4 ``mma.sp`` kernel, which ``GPURule`` picks for fp16 on sm_80+, takes fp16
    activations (``RewriteToSparse`` casts them; ``ToMixedPrecision`` leaves the fp16 arguments
    of a ``call_tir`` alone) and accumulates in fp32; its output has the type of the matmul it
    replaces (fp32 while the model is not yet converted).
    """

    #: The kernels take no bias or activation: those stay Relax ops that ``FuseOps`` fuses.
    fuses_epilogue = False
    #: Activations always go through a ``(1, M, K)`` view and the output through one back.
    views_always = True
    #: fp16 runs the ``mma.sp`` kernel (which :class:`~.gpu_sparse_rule.GPURule` chooses only
    #: for sm_80+).
    matmul_dtypes = ("float32", "float16")

    def __init__(self, target: Target, dtype: str = "float32") -> None:
        self.knobs = CUDATileKnobs()
        self.dtype = dtype

    def matmul(self, weight: np.ndarray, m: int, plan: Plan, epilogue: Epilogue) -> SparseKernel:
        """``x (1, m, k) @ weight.T``; ``epilogue`` is always plain (no fused epilogue)."""
        n, k = weight.shape
        if plan.kernel == mma_sp_kernel_name():  # fp16, 2:4, sparse tensor cores
            mat = to_mma_sp(weight)
            y_dtype = "float16" if weight.dtype == np.float16 else "float32"
            func = cuda_mma_sp_matmul(m, k, n, out_dtype=y_dtype)
            flops = 2 * m * n * (-(-k // 4) * 2)  # the kept half of the inputs
            return SparseKernel(
                func, (mat.values, mat.metadata), ((1, m, k),), (1, m, n), flops, y_dtype, "float16"
            )
        if plan.nm is not None:
            mat = to_nm(weight, plan.nm)
            func = cuda_nm_matmul(m, k, n, plan.nm, mat.values.shape[0], knobs=self.knobs)
            weights, stored = (mat.values, nm_group_offsets(mat)), int(mat.values.size)
        else:
            bsr = to_bsr(weight, plan.block, row_multiple=1, nonempty=True)
            func = cuda_bsr_matmul(m, k, n, plan.block, bsr.nnzb, bsr.block_rows, knobs=self.knobs)
            weights, stored = _bsr_arrays(bsr), int(bsr.data.size)
        return SparseKernel(func, weights, ((1, m, k),), (1, m, n), 2 * m * stored)

    def conv2d(
        self, weight: np.ndarray, batch: int, hw: int, plan: Plan, epilogue: Epilogue
    ) -> SparseKernel:
        """The BSR kernel of a 1x1, stride-1, unpadded NCHW conv."""
        n, k = weight.shape
        bsr = to_bsr(weight, plan.block, row_multiple=1, nonempty=True)
        func = cuda_bsr_matmul(hw, k, n, plan.block, bsr.nnzb, bsr.block_rows,
                               knobs=self.knobs, batch=batch, **_CONV_LAYOUTS)  # fmt: skip
        flops = 2 * batch * hw * int(bsr.data.size)
        return SparseKernel(func, _bsr_arrays(bsr), (), (batch, n, hw), flops)
