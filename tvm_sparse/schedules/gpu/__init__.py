"""GPU (CUDA) schedule rules: TVM's dlight GPU rules, most specific first."""

from __future__ import annotations

from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

__all__ = ["default_rules"]


def default_rules(target: Target) -> list[ScheduleRule]:
    """dlight's GPU rules; ``Fallback`` binds threads for any remaining function."""
    return [
        dl.gpu.Matmul(),
        dl.gpu.GEMV(),
        dl.gpu.Reduction(),
        dl.gpu.GeneralReduction(),
        dl.gpu.Fallback(),
    ]
