"""The backend of a target family: what compiling for CPUs and for CUDA GPUs does differently.

:func:`backend_of` picks the record once from the target's kind; passes, schedules and the
pipeline read its fields instead of testing the kind. The family's pieces live with their layer
(choosers and kernel emitters in ``passes/``, rules in ``schedules/``), and those layers import
``targets``, so each field that names one is a function importing it when first called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tvm
from tvm.target import Target

from .facts import vector_lanes

__all__ = ["CPU", "CUDA", "Backend", "backend_of"]


@dataclass(frozen=True)
class Backend:
    """What differs between target families.

    Parameters
    ----------
    family : str
        ``"cpu"`` or ``"cuda"``.
    kind : str
        The TVM target kind it compiles (``"llvm"``, ``"cuda"``).
    hardware : str
        What that kind covers, for messages.
    device : str
        The TVM device type its code runs on (``tvm.device(device, 0)``, an RPC session's
        ``session.device(device, 0)``).
    winograd : bool
        Whether dense 3x3 convs may run as ``winograd_conv2d`` (a CPU kernel and schedule).
    channel_multiple : Callable[[Target], int]
        What ``ShrinkPrunedChannels`` rounds kept channels to: CPU schedules vectorise over
        output channels, so a multiple of the SIMD width.
    passes : Callable[..., list[tvm.transform.Pass]]
        ``(target, *, layer_timer, winograd)``: the family's passes after the sparsity passes.
    schedule_rules : Callable[[Target], list]
        The schedule rules for a target, most specific first, a fallback last.
    lowering : Callable[[Target], list[tvm.transform.Pass]]
        TVM's dataflow lowering and finalizing passes of the family.
    sparse_chooser : Callable[..., Any]
        ``(target, config, calibration, layer_timer)``: the object that decides each pruned
        layer for ``RewriteToSparse`` (``matmul(...)`` and ``conv2d(...)`` return a ``Plan``).
    sparse_kernels : Callable[[Target], Any]
        The emitters of the family's sparse kernels (``matmul(...)``, ``conv2d(...)``).
    """

    family: str
    kind: str
    hardware: str
    device: str
    winograd: bool
    channel_multiple: Callable[[Target], int]
    passes: Callable[..., list[tvm.transform.Pass]]
    schedule_rules: Callable[[Target], list]
    lowering: Callable[[Target], list[tvm.transform.Pass]]
    sparse_chooser: Callable[..., Any]
    sparse_kernels: Callable[[Target], Any]


def _cpu_passes(target: Target, *, layer_timer: Any = None, winograd: bool = True) -> list:
    from ..passes import ConvertToNHWC, PadAttentionTokens, RewriteToWinograd

    passes = [PadAttentionTokens(vector_lanes(target)), ConvertToNHWC()]
    if winograd:
        passes.append(RewriteToWinograd(target, layer_timer=layer_timer))
    return passes


def _cpu_rules(target: Target) -> list:
    from ..schedules import cpu

    return cpu.default_rules(target)


def _cpu_lowering(target: Target) -> list[tvm.transform.Pass]:
    from tvm.relax.backend.cpu_generic import pipeline

    return pipeline.dataflow_lower_passes(target) + pipeline.finalize_passes(target)


def _cpu_chooser(target: Target, config: Any, calibration: Any, layer_timer: Any) -> Any:
    from ..passes.sparse_decisions import CPUDecisions

    return CPUDecisions(target, config, calibration, layer_timer)


def _cpu_kernels(target: Target) -> Any:
    from ..passes.sparse_kernels import CPUSparseKernels

    return CPUSparseKernels(target)


def _cuda_rules(target: Target) -> list:
    from ..schedules import gpu

    return gpu.default_rules(target)


def _cuda_lowering(target: Target) -> list[tvm.transform.Pass]:
    from tvm.relax.backend.cuda import pipeline

    return pipeline.dataflow_lower_passes(target) + pipeline.finalize_passes(target)


def _cuda_chooser(target: Target, config: Any, calibration: Any, layer_timer: Any) -> Any:
    from ..passes.gpu_sparse_rule import GPURule

    return GPURule(config)


def _cuda_kernels(target: Target) -> Any:
    from ..passes.sparse_kernels import CUDASparseKernels

    return CUDASparseKernels(target)


CPU = Backend(
    "cpu", "llvm", "x86, Arm", device="cpu", winograd=True, channel_multiple=vector_lanes,
    passes=_cpu_passes, schedule_rules=_cpu_rules, lowering=_cpu_lowering,
    sparse_chooser=_cpu_chooser, sparse_kernels=_cpu_kernels,
)  # fmt: skip

CUDA = Backend(
    "cuda", "cuda", "Jetson", device="cuda", winograd=False, channel_multiple=lambda _: 1,
    passes=lambda _target, **_options: [], schedule_rules=_cuda_rules, lowering=_cuda_lowering,
    sparse_chooser=_cuda_chooser, sparse_kernels=_cuda_kernels,
)  # fmt: skip

_BY_KIND = {backend.kind: backend for backend in (CPU, CUDA)}


def backend_of(target: Target | None, *, allow_none: bool = False) -> Backend | None:
    """The backend that compiles ``target``.

    Parameters
    ----------
    target : tvm.target.Target | None
        The target; its kind picks the backend.
    allow_none : bool
        Return ``None`` for no target, or a kind no backend compiles, instead of raising.

    Raises
    ------
    ValueError
        If no backend compiles the target's kind and ``allow_none`` is false; the message
        lists the kinds that are.
    """
    backend = _BY_KIND.get(target.kind.name) if target is not None else None
    if backend is None and not allow_none:
        if target is None:
            raise ValueError("no target given, and none is current (with target: ...)")
        supported = " and ".join(f"{b.kind!r} ({b.hardware})" for b in _BY_KIND.values())
        raise ValueError(
            f"unsupported target kind {target.kind.name!r}: tvm_sparse compiles for {supported}"
        )
    return backend
