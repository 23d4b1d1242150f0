"""Sparse TIR kernels for CUDA GPUs (Jetson), built already scheduled.

``bsr_matmul`` and ``nm_matmul`` read the weight formats of :mod:`tvm_sparse.kernels.formats`
(N:M columns as ``int8`` group offsets, :func:`nm_group_offsets`); ``tiling`` holds their shared
thread tiling and the shared-memory activation tile.
"""

from .bsr_matmul import cuda_bsr_matmul
from .nm_matmul import cuda_nm_matmul, nm_group_offsets
from .tiling import CUDATileKnobs

__all__ = ["CUDATileKnobs", "cuda_bsr_matmul", "cuda_nm_matmul", "nm_group_offsets"]
