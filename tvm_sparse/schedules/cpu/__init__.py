"""Dense CPU schedule rules for the TIR that Relax ``LegalizeOps`` + ``FuseOps`` + ``FuseTIR`` emit.

:func:`default_rules` lists them most specific first, ending in :class:`Fallback`, which
schedules any function, so that every loop nest reaching an llvm target is parallel and, where
legal, vectorised. ``Matmul``, ``Conv2d`` and ``GEMV`` can also draw their knobs from a
:class:`KnobSampler` (:meth:`CPUScheduleRule.sample`): the search space of the autotuner.
"""

from __future__ import annotations

from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

from .base import CPUScheduleRule, NotApplicable, num_cores, vector_bits, vector_lanes
from .conv2d import Conv2d, Conv2dKnobs
from .conv2d_nhwc import Conv2dNHWC, Conv2dNHWCKnobs
from .fallback import Fallback, FallbackKnobs
from .gemv import GEMV
from .injective import Injective, InjectiveKnobs
from .knob_sampler import KnobDecisionError, KnobSampler
from .matmul import Matmul, MatmulKnobs
from .pool import Pool, PoolKnobs
from .reduction import Reduction, ReductionKnobs

__all__ = [
    "CPUScheduleRule",
    "Conv2d",
    "Conv2dKnobs",
    "Conv2dNHWC",
    "Conv2dNHWCKnobs",
    "Fallback",
    "FallbackKnobs",
    "GEMV",
    "Injective",
    "InjectiveKnobs",
    "KnobDecisionError",
    "KnobSampler",
    "Matmul",
    "MatmulKnobs",
    "NotApplicable",
    "Pool",
    "PoolKnobs",
    "Reduction",
    "ReductionKnobs",
    "default_rules",
    "num_cores",
    "vector_bits",
    "vector_lanes",
]


def default_rules(target: Target) -> list[ScheduleRule]:
    """The CPU rules for ``target``, most specific first; the last one accepts any PrimFunc.

    Parameters
    ----------
    target : Target
        An llvm target; the knobs of each rule are derived from it (SIMD width, cores).

    Returns
    -------
    list[ScheduleRule]
        ``[Conv2d, Conv2dNHWC, GEMV, Matmul, Pool, Reduction, Injective, Fallback]``, with
        per-target knobs.
    """
    return [
        Conv2d(Conv2dKnobs.for_target(target)),
        Conv2dNHWC(Conv2dNHWCKnobs.for_target(target)),
        GEMV(),
        Matmul(MatmulKnobs.for_target(target)),
        Pool(PoolKnobs.for_target(target)),
        Reduction(ReductionKnobs.for_target(target)),
        Injective(InjectiveKnobs.for_target(target)),
        Fallback(FallbackKnobs.for_target(target)),
    ]
