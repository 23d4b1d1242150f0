"""The rule that decides pruned layers for CUDA targets, until a GPU calibrates them.

:class:`~tvm_sparse.passes.RewriteToSparse` asks :class:`GPURule` instead of the CPU's measured
decisions (:mod:`.sparse_decisions`) when the target is a GPU.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tvm.support.nvcc import get_target_compute_version, parse_compute_version
from tvm.target import Target

from ..kernels.bsr_matmul import bsr_matmul_kernel_name
from ..kernels.formats import to_bsr
from ..kernels.gpu.mma_sp_matmul import mma_sp_kernel_name
from ..kernels.nm_matmul import nm_matmul_kernel_name
from ..kernels.sparse_conv2d import Conv2DGeometry
from .detect_sparsity import WeightSparsity
from .sparse_decisions import Plan, conforms_to_nm, pattern_of
from .sparsity_config import SparsityConfig

__all__ = ["GPU_RULE", "GPURule", "decide_cuda", "decide_cuda_fp16"]

# No GPU has calibrated the CUDA kernels yet, so the cost model is replaced by a fixed rule,
# conservative on purpose: go sparse only where work and weight traffic shrink by far more than
# the sparse kernels could plausibly lose against dlight's dense GPU schedules.

GPU_RULE = "uncalibrated GPU rule"
#: BSR only for blocks of at least this many rows (a thread reuses one activation load for each)
_GPU_MIN_BLOCK_ROWS = 8
#: ... holding at most this fraction of the blocks.
_GPU_MAX_BLOCK_DENSITY = 0.3
#: N:M patterns the compressed kernel takes in "auto" (halving or better, int8 offsets).
_GPU_NM = ((2, 4), (4, 8))
#: Blocks "auto" weighs besides the detected one (fits block patterns shifted off the grid).
_GPU_ROW_BLOCKS = ((16, 1), (8, 1))
#: The first compute capability with sparse tensor cores (``mma.sp``): Ampere.
_SPARSE_TENSOR_CORES = (8, 0)


def _block_density(weight: np.ndarray, block: tuple[int, int]) -> float:
    """Fraction of the ``block`` grid (over the real ``N x K``) holding a nonzero."""
    bsr = to_bsr(weight, block)
    n, k = weight.shape
    return bsr.nnzb / max(-(-n // block[0]) * -(-k // block[1]), 1)


def decide_cuda(
    name: str, info: WeightSparsity, weight: np.ndarray, op: str, config: SparsityConfig
) -> Plan:
    """The GPU rule: BSR for blocks of >= 8 rows at block density <= 0.3, else the N:M kernel
    for a matmul weight that conforms to 2:4 or 4:8, else dense. Config choices are honoured."""
    choice = config.choice_for(name)
    if choice.kind == "dense":
        return Plan("dense", "dense", f"{GPU_RULE}: dense requested by the sparsity config")
    if choice.kind == "bsr":
        block = choice.block or tuple(info.block_shape)
        pattern = pattern_of(block, None)
        return Plan(
            bsr_matmul_kernel_name(block),
            pattern,
            f"{GPU_RULE}: {pattern} requested by the sparsity config (block density "
            f"{_block_density(weight, block):.2f})",
            block,
        )
    if choice.kind == "nm":
        wanted = tuple(choice.nm or info.nm or ())
        if op != "matmul":
            return Plan(
                bsr_matmul_kernel_name((1, 1)),
                pattern_of((1, 1), None),
                f"{GPU_RULE}: N:M requested by the sparsity config; a convolution runs it "
                "through the 1x1 BSR kernel",
                (1, 1),
            )
        if not wanted or not conforms_to_nm(weight, wanted):
            return Plan(
                "dense",
                "dense",
                f"{GPU_RULE}: N:M requested but the weight is not {wanted or 'N:M'} sparse",
            )
        return Plan(
            nm_matmul_kernel_name(wanted),
            pattern_of(None, wanted),
            f"{GPU_RULE}: {wanted[0]}:{wanted[1]} requested by the sparsity config",
            None,
            wanted,
        )
    # "auto": the detected block if tall enough, and the row blocks patterns shifted off the
    # grid still fit; the one storing fewest blocks wins.
    blocks = {tuple(info.block_shape), *_GPU_ROW_BLOCKS}
    tall = [b for b in blocks if b[0] >= _GPU_MIN_BLOCK_ROWS]
    # ties go to the larger block: more FMAs per activation load, fewer indices
    density, _, block = min((_block_density(weight, b), (-b[0], -b[1]), b) for b in tall)
    where = f"block density {density:.2f} in {block[0]}x{block[1]} blocks"
    if density <= _GPU_MAX_BLOCK_DENSITY:
        return Plan(
            bsr_matmul_kernel_name(block),
            pattern_of(block, None),
            f"{GPU_RULE}: {where} (>= {_GPU_MIN_BLOCK_ROWS} rows, <= "
            f"{_GPU_MAX_BLOCK_DENSITY}): BSR kernel",
            block,
        )
    nm = tuple(info.nm) if info.nm else None
    if op == "matmul" and nm in _GPU_NM:
        return Plan(
            nm_matmul_kernel_name(nm),
            pattern_of(None, nm),
            f"{GPU_RULE}: {where} too dense for BSR; conforms to {nm[0]}:{nm[1]}: "
            "compressed N:M kernel",
            None,
            nm,
        )
    why_not_nm = "not 2:4 or 4:8" if op == "matmul" else "N:M is for matmuls"
    return Plan(
        "dense",
        "dense",
        f"{GPU_RULE}: {where} (BSR needs <= {_GPU_MAX_BLOCK_DENSITY}), {why_not_nm}: dense",
    )


def decide_cuda_fp16(
    name: str, weight: np.ndarray, config: SparsityConfig, compute: tuple[int, int]
) -> Plan:
    """The GPU rule for an fp16 matmul: the ``mma.sp`` kernel for a 2:4 weight on a GPU with
    sparse tensor cores (compute capability ``compute`` >= 8.0), else dense."""
    choice = config.choice_for(name)
    if choice.kind == "dense":
        return Plan("dense", "dense", f"{GPU_RULE}: dense requested by the sparsity config")
    sm = f"sm_{compute[0]}{compute[1]}"
    if compute < _SPARSE_TENSOR_CORES:
        return Plan(
            "dense",
            "dense",
            f"{GPU_RULE}: fp16 sparse matmuls need sparse tensor cores (sm_80+), {sm} has none "
            "and the CUDA-core kernels are fp32 only: dense",
        )
    wanted = tuple(choice.nm) if choice.kind == "nm" and choice.nm else (2, 4)
    if choice.kind == "bsr" or wanted != (2, 4):
        requested = "BSR" if choice.kind == "bsr" else f"{wanted[0]}:{wanted[1]}"
        return Plan(
            "dense",
            "dense",
            f"{GPU_RULE}: {requested} requested, but fp16 runs only the 2:4 mma.sp kernel: dense",
        )
    if not conforms_to_nm(weight, (2, 4)):
        return Plan(
            "dense", "dense", f"{GPU_RULE}: fp16 weight is not 2:4 sparse (mma.sp needs 2:4): dense"
        )
    how = "requested by the sparsity config" if choice.kind == "nm" else "conforms to 2:4"
    return Plan(
        mma_sp_kernel_name(),
        pattern_of(None, (2, 4)),
        f"{GPU_RULE}: fp16 weight {how}; {sm} has sparse tensor cores: mma.sp kernel "
        "(half the tensor-core work of dense)",
        None,
        (2, 4),
    )


class GPURule:
    """The CUDA chooser of :class:`~tvm_sparse.passes.RewriteToSparse`: :func:`decide_cuda`
    for fp32 matmuls and for the convs the GPU kernels run (1x1, stride 1, unpadded),
    :func:`decide_cuda_fp16` for the matmuls of an fp16 model.

    ``dtype`` is the model's compute dtype (``compile(..., dtype=...)``). In an fp16 model a 2:4
    weight runs the ``mma.sp`` kernel where the GPU has sparse tensor cores; every other sparse
    layer runs an fp32 kernel of :mod:`tvm_sparse.kernels.gpu`, and ``ConvertComputeDtype``
    casts its activations to fp32 and its result back.
    """

    def __init__(
        self, config: SparsityConfig, target: Target | None = None, dtype: str = "float32"
    ) -> None:
        self.config = config
        self.dtype = dtype
        version = get_target_compute_version(target) if target is not None else None
        #: compute capability of the target; (0, 0) where it names none
        self.compute = parse_compute_version(version) if version else (0, 0)

    def matmul(
        self, name: str, info: WeightSparsity, weight: np.ndarray, m: int, epilogue_ops=()
    ) -> Plan:
        if weight.dtype == np.float16:  # an fp16 module: only the fp16 kernel takes it
            return decide_cuda_fp16(name, weight, self.config, self.compute)
        if self.dtype == "float16":
            plan = decide_cuda_fp16(name, weight, self.config, self.compute)
            if plan.kernel != "dense":
                return plan
        return self._in_dtype(decide_cuda(name, info, weight, "matmul", self.config))

    def _in_dtype(self, plan: Plan) -> Plan:
        """``plan`` with a note where its fp32 kernel runs in a lower-precision model."""
        if plan.kernel == "dense" or self.dtype == "float32":
            return plan
        note = f"fp32 kernel in this {self.dtype} model (activations cast at its edges)"
        return dataclasses.replace(plan, reason=f"{plan.reason}; {note}")

    def conv2d(
        self, name: str, info: WeightSparsity, weight: np.ndarray, geom: Conv2DGeometry
    ) -> Plan:
        if not geom.is_pointwise:
            return Plan(
                "dense",
                "dense",
                f"{GPU_RULE}: only 1x1, stride-1, unpadded conv2d maps onto the GPU kernels "
                "(no GPU im2col kernel yet): dense",
            )
        if self.dtype == "float16" or weight.dtype == np.float16:  # a matmul over the pixels
            rows = weight.reshape(len(weight), -1)
            plan = decide_cuda_fp16(name, rows, self.config, self.compute)
            if plan.kernel != "dense" or weight.dtype == np.float16:
                return plan
        return self._in_dtype(decide_cuda(name, info, weight, "conv2d", self.config))
