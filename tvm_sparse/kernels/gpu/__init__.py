"""Sparse TIR kernels for CUDA GPUs (Jetson), built already scheduled.

``bsr_matmul`` and ``nm_matmul`` read the weight formats of :mod:`tvm_sparse.kernels.formats`
(N:M columns as ``int8`` group offsets, :func:`nm_group_offsets`); ``tiling`` holds their shared
thread tiling and the shared-memory activation tile. ``mma_sp_matmul`` runs fp16 2:4 weights on
sparse tensor cores (sm_80+), from the registers ``mma_sp_weights`` lays out with the fragment
maps of ``mma_sp_layout``.
"""

from .bsr_matmul import cuda_bsr_matmul
from .mma_sp_matmul import MMASpKnobs, cuda_mma_sp_matmul, mma_sp_kernel_name
from .mma_sp_weights import MMASpWeight, to_mma_sp
from .nm_matmul import cuda_nm_matmul, nm_group_offsets
from .tiling import CUDATileKnobs

__all__ = [
    "CUDATileKnobs",
    "MMASpKnobs",
    "MMASpWeight",
    "cuda_bsr_matmul",
    "cuda_mma_sp_matmul",
    "cuda_nm_matmul",
    "mma_sp_kernel_name",
    "nm_group_offsets",
    "to_mma_sp",
]
