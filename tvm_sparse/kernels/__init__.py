"""Hand-written TIR kernels, built already scheduled, and the cost model that picks the sparse
ones on CPUs.

``formats`` compresses pruned weights (BSR, N:M); ``bsr_matmul``, ``nm_permute`` (N:M on x86)
and ``nm_matmul`` (N:M elsewhere) are the CPU matmul kernels with their knobs, applying an
``epilogue`` (bias add, activation) as they store their outputs; ``sparse_conv2d`` lowers
convolutions onto them; ``cost_model`` decides per layer whether sparse beats dense on a
target, from a table that :mod:`tvm_sparse.measure` measures. ``gpu`` holds the CUDA kernels
for the same formats. ``winograd_conv2d`` is the dense Winograd F(2x2, 3x3) conv that
``RewriteToWinograd`` puts 3x3 stride-1 convs on.
"""

from .bsr_matmul import BSRMatmulKnobs, bsr_matmul, bsr_matmul_kernel_name
from .cost_model import (
    Calibration,
    CalibrationWarning,
    Estimate,
    default_cache_path,
    load_calibration,
)
from .epilogue import Epilogue
from .formats import BSRMatrix, NMMatrix, to_bsr, to_nm
from .nm_matmul import NMMatmulKnobs, nm_matmul, nm_matmul_kernel_name, nm_matmul_weights
from .nm_permute import NMPermuteKnobs, nm_permute, nm_permute_applies, nm_permute_weights
from .sparse_conv2d import Conv2DGeometry, im2col
from .winograd_conv2d import WinogradKnobs, winograd_conv2d, winograd_weight

__all__ = [
    "BSRMatmulKnobs",
    "BSRMatrix",
    "Calibration",
    "CalibrationWarning",
    "Conv2DGeometry",
    "Epilogue",
    "Estimate",
    "NMMatmulKnobs",
    "NMMatrix",
    "NMPermuteKnobs",
    "WinogradKnobs",
    "bsr_matmul",
    "bsr_matmul_kernel_name",
    "default_cache_path",
    "im2col",
    "load_calibration",
    "nm_matmul",
    "nm_matmul_kernel_name",
    "nm_matmul_weights",
    "nm_permute",
    "nm_permute_applies",
    "nm_permute_weights",
    "to_bsr",
    "to_nm",
    "winograd_conv2d",
    "winograd_weight",
]
