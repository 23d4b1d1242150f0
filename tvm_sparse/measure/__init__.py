"""Measuring kernels on a device, for the decisions that rest on measurements.

``calibrate_host`` measures the calibration table that :mod:`tvm_sparse.kernels.cost_model`
reads, from the kernel rates of ``kernel_timing`` (the dense matmul as the pipeline builds it,
the sparse kernels on weights pruned by ``random_masks``); ``predicted_table`` predicts one
from the same kernels' hot loops with ``llvm-mca``, for Arm cores no board has measured.
Measurement sits above the pipeline it drives: kernels and passes read what it measured and
never import it.
"""

from .calibrate_host import calibrate, calibrate_on_first_use
from .kernel_timing import measure_bsr, measure_dense, measure_nm, time_dense_relax, time_prim_func
from .predicted_table import predict_calibration
from .random_masks import block_mask, nm_mask

__all__ = [
    "block_mask",
    "calibrate",
    "calibrate_on_first_use",
    "measure_bsr",
    "measure_dense",
    "measure_nm",
    "nm_mask",
    "predict_calibration",
    "time_dense_relax",
    "time_prim_func",
]
