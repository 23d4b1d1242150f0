"""The backend of a target family: the facts that make compiling for CPUs and for CUDA GPUs
differ.

:func:`backend_of` picks the record once from the target's kind; passes, schedules and the
pipeline read its fields instead of testing the kind. Each layer keeps its own pieces of a
family in one table keyed by :attr:`Backend.family` (``passes.rewrite_to_sparse`` its choosers
and kernel emitters, ``schedules`` its rules, ``pipeline`` its passes and lowering), so that
``targets`` imports none of the layers above it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tvm.support import nvcc
from tvm.target import Target

from .facts import vector_lanes

__all__ = ["CPU", "COMPUTE_DTYPES", "CUDA", "Backend", "backend_of", "check_compute_dtype"]

#: The ``dtype=`` values of ``tvm_sparse.compile``; what each target takes is its backend's.
COMPUTE_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Backend:
    """What differs between target families.

    Parameters
    ----------
    family : str
        ``"cpu"`` or ``"cuda"``: the key of each layer's table of family pieces.
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
    compute_dtypes : Callable[[Target], tuple[str, ...]]
        The ``dtype=`` values the target compiles (:data:`COMPUTE_DTYPES`, ``float32`` first).
    """

    family: str
    kind: str
    hardware: str
    device: str
    winograd: bool
    channel_multiple: Callable[[Target], int]
    compute_dtypes: Callable[[Target], tuple[str, ...]]


def _cuda_dtypes(target: Target) -> tuple[str, ...]:
    """fp16 arithmetic from sm_53, bf16 from sm_80 (Ampere; Orin is sm_87, Xavier sm_72)."""
    version = nvcc.get_target_compute_version(target)
    return (
        "float32",
        *(["float16"] if nvcc.have_fp16(version) else []),
        *(["bfloat16"] if nvcc.have_bf16(version) else []),
    )


# The CPU kernels, schedules and cost-model tables of this project are fp32 throughout.
CPU = Backend("cpu", "llvm", "x86, Arm", "cpu", winograd=True, channel_multiple=vector_lanes,
              compute_dtypes=lambda _: ("float32",))  # fmt: skip
CUDA = Backend("cuda", "cuda", "Jetson", "cuda", winograd=False, channel_multiple=lambda _: 1,
               compute_dtypes=_cuda_dtypes)  # fmt: skip

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


def check_compute_dtype(target: Target, dtype: str) -> str:
    """``dtype`` if ``target`` compiles models in it, else a ``ValueError`` naming what it takes.

    Raises
    ------
    ValueError
        For a dtype outside :data:`COMPUTE_DTYPES`, or one the target's hardware (a CUDA
        architecture) or backend (the fp32 CPU kernels) does not compute in.
    """
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"dtype={dtype!r} is not valid: use one of {', '.join(COMPUTE_DTYPES)}")
    backend = backend_of(target)
    supported = backend.compute_dtypes(target)
    if dtype not in supported:
        arch = target.attrs.get("arch") or target.attrs.get("mcpu") or target.kind.name
        why = (
            "tvm_sparse's CPU kernels and schedules are fp32"
            if backend.family == "cpu"
            else f"{dtype} needs {'sm_80' if dtype == 'bfloat16' else 'sm_53'} or newer"
        )
        raise ValueError(
            f"dtype={dtype!r} is not supported on {arch} ({target.kind.name}): {why}; "
            f"this target supports {', '.join(supported)}"
        )
    return dtype
