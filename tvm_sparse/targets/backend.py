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

from tvm.target import Target

from .facts import vector_lanes

__all__ = ["CPU", "CUDA", "Backend", "backend_of"]


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
    """

    family: str
    kind: str
    hardware: str
    device: str
    winograd: bool
    channel_multiple: Callable[[Target], int]


CPU = Backend("cpu", "llvm", "x86, Arm", "cpu", winograd=True, channel_multiple=vector_lanes)
CUDA = Backend("cuda", "cuda", "Jetson", "cuda", winograd=False, channel_multiple=lambda _: 1)

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
