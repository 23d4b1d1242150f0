"""Target presets: the TVM target, the cross compiler and the pruning pattern that suits a device.

Presets are data. Where TVM ships a tag for the device (``nvidia/jetson-orin-nano``) the preset
reuses it; the rest are registered here, in one place.
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass, field
from typing import Any

from tvm.target import Target, codegen

from .backend import backend_of
from .host import (
    available_cores,
    is_host_target,  # noqa: F401  (its home before host.py; kept importable)
)

__all__ = [
    "PruningDefaults",
    "TargetPreset",
    "get_preset",
    "list_presets",
    "register_preset",
    "resolve_target",
]


@dataclass(frozen=True)
class PruningDefaults:
    """The pruning pattern that turns into speed on a device.

    Parameters
    ----------
    pattern : str
        ``"block"`` (CPUs: block-sparse kernels), ``"n:m"`` (Ampere-class GPUs: 2:4) or
        ``"channel"`` (small edge devices: smaller dense ops).
    block_shape : tuple[int, int] | None
        Block of (output rows, input columns) for ``"block"``.
    n_m : tuple[int, int] | None
        (N, M) for ``"n:m"``.
    round_to : int
        Kept channels are rounded to a multiple of this, to keep vector lanes full.
    """

    pattern: str
    block_shape: tuple[int, int] | None = None
    n_m: tuple[int, int] | None = None
    round_to: int = 1


@dataclass(frozen=True)
class TargetPreset:
    """A named compilation target.

    Parameters
    ----------
    name : str
        The preset's name, as given to ``tvm_sparse.compile(model, target=name)``.
    description : str
        One line for listings.
    target : dict | str | Target | None
        A TVM target as a JSON dict, a TVM tag or a Target; ``host`` (if any) inside it.
        ``None`` means the host CPU, detected when the preset is looked up.
    cross_compiler : str | None
        The C++ compiler that links an exported library for the device; ``None`` for the host.
    pruning : PruningDefaults
        The pattern that suits the hardware.
    extra : dict
        Anything else a caller keeps with the preset.
    """

    name: str
    description: str
    target: dict[str, Any] | str | Target | None
    cross_compiler: str | None
    pruning: PruningDefaults
    extra: dict[str, Any] = field(default_factory=dict)

    def tvm_target(self) -> Target:
        """Build the :class:`tvm.target.Target` of this preset."""
        if isinstance(self.target, Target):
            return self.target
        if isinstance(self.target, str):
            return Target(self.target)
        return Target(dict(self.target))


_CPU_PRUNING = PruningDefaults(pattern="block", block_shape=(16, 1), round_to=16)
#: 8x1 on NEON: two 4-lane vectors per block; llvm-mca puts the 8x1 BSR loop as close to the
#: A72 / A76 peak as 16x1 (``benchmarks/arm_static.py``), and the smaller block keeps more of
#: the model's accuracy at the same sparsity.
_ARM_PRUNING = PruningDefaults(pattern="block", block_shape=(8, 1), round_to=8)
_EDGE_PRUNING = PruningDefaults(pattern="channel", round_to=8)
_AMPERE_PRUNING = PruningDefaults(pattern="n:m", n_m=(2, 4), round_to=8)

_AARCH64 = "aarch64-linux-gnu"
_AARCH64_CXX = "aarch64-linux-gnu-g++"


def _host_x86() -> dict[str, Any]:
    return {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": available_cores()}


def _arm(mcpu: str, cores: int) -> dict[str, Any]:
    return {
        "kind": "llvm",
        "mtriple": _AARCH64,
        "mcpu": mcpu,
        "mattr": ["+neon"],
        "num-cores": cores,
    }


_PRESETS: dict[str, TargetPreset] = {}


def register_preset(preset: TargetPreset, *, override: bool = False) -> None:
    """Register a preset under ``preset.name``.

    Raises
    ------
    ValueError
        If the name is taken and ``override`` is false.
    """
    if preset.name in _PRESETS and not override:
        raise ValueError(f"target preset {preset.name!r} is already registered")
    _PRESETS[preset.name] = preset


for _preset in [
    TargetPreset(
        "x86",
        "this machine's x86 CPU, features detected by LLVM",
        None,  # resolved lazily: the host CPU is detected when asked for
        None,
        _CPU_PRUNING,
    ),
    TargetPreset(
        "x86-avx2",
        "x86-64 with AVX2 and FMA (Haswell and newer)",
        {"kind": "llvm", "mcpu": "haswell"},
        None,
        _CPU_PRUNING,
    ),
    TargetPreset(
        "x86-avx512",
        "x86-64 with AVX-512 (Skylake-SP and newer)",
        {"kind": "llvm", "mcpu": "skylake-avx512"},
        None,
        _CPU_PRUNING,
    ),
    TargetPreset(
        "arm-cortex-a72",
        "Arm Cortex-A72, 4 cores (Raspberry Pi 4), NEON",
        _arm("cortex-a72", 4),
        _AARCH64_CXX,
        _ARM_PRUNING,
    ),
    TargetPreset(
        "arm-cortex-a76",
        "Arm Cortex-A76, 4 cores (Raspberry Pi 5), NEON with dot product",
        _arm("cortex-a76", 4),
        _AARCH64_CXX,
        _ARM_PRUNING,
    ),
    TargetPreset(
        "arm-neoverse-n1",
        "Arm Neoverse-N1 server cores (Graviton2, Ampere Altra), NEON",
        _arm("neoverse-n1", 4),
        _AARCH64_CXX,
        _ARM_PRUNING,
    ),
    TargetPreset(
        "jetson-orin-nano",
        "NVIDIA Jetson Orin Nano (Ampere, sm_87)",
        "nvidia/jetson-orin-nano",
        _AARCH64_CXX,
        _AMPERE_PRUNING,
    ),
    TargetPreset(
        "jetson-agx-orin",
        "NVIDIA Jetson AGX Orin 64GB (Ampere, sm_87)",
        "nvidia/jetson-agx-orin-64gb",
        _AARCH64_CXX,
        _AMPERE_PRUNING,
    ),
    TargetPreset(
        "jetson-xavier-nx",
        "NVIDIA Jetson Xavier NX (Volta, sm_72), 6 Carmel cores",
        {
            "kind": "cuda",
            "arch": "sm_72",
            "max_shared_memory_per_block": 49152,
            "max_threads_per_block": 1024,
            "thread_warp_size": 32,
            "registers_per_block": 65536,
            "host": {**_arm("carmel", 6)},
        },
        _AARCH64_CXX,
        _EDGE_PRUNING,
    ),
]:
    register_preset(_preset)


def list_presets() -> list[str]:
    """The names of all registered presets."""
    return sorted(_PRESETS)


def get_preset(name: str) -> TargetPreset:
    """Look up a preset by name.

    Raises
    ------
    ValueError
        If no preset has that name; the message lists them.
    """
    if not isinstance(name, str) or name not in _PRESETS:
        raise ValueError(
            f"unknown target {name!r}: choose one of {', '.join(list_presets())}, "
            "or pass a tvm.target.Target or a target JSON dict"
        )
    preset = _PRESETS[name]
    if preset.target is None:
        preset = dataclasses.replace(preset, target=_host_x86())
    return preset


def resolve_target(target: str | dict | Target | TargetPreset) -> TargetPreset:
    """Turn what a user passes as ``target`` into a preset.

    A preset name, a :class:`TargetPreset`, a :class:`tvm.target.Target` or a target JSON dict
    are accepted. Targets that are not presets get the pruning defaults of their family and a
    cross compiler when their triple is aarch64.
    """
    if isinstance(target, TargetPreset):
        return target
    if isinstance(target, str):
        return get_preset(target)
    if isinstance(target, dict):
        try:
            tvm_target = Target(dict(target))
        except Exception as err:  # TVM raises its own error type for malformed dicts
            raise ValueError(f"invalid target dict {target!r}: {err}") from err
    elif isinstance(target, Target):
        tvm_target = target
    else:
        raise TypeError(
            f"target must be a preset name, a tvm.target.Target or a dict, not "
            f"{type(target).__name__}; presets: {', '.join(list_presets())}"
        )
    try:
        backend = backend_of(tvm_target)
    except ValueError as err:
        raise ValueError(f"{err}; presets: {', '.join(list_presets())}") from None
    if backend.family == "cpu":
        triple = str(tvm_target.attrs.get("mtriple", "") or "")
        is_arm = triple.startswith("aarch64") or (not triple and platform.machine() == "aarch64")
        cross = (
            _AARCH64_CXX
            if triple.startswith("aarch64") and platform.machine() != "aarch64"
            else None
        )
        pruning = _ARM_PRUNING if is_arm else _CPU_PRUNING
    else:  # cuda
        arch = str(tvm_target.attrs.get("arch", ""))
        ampere = arch.startswith("sm_") and int(arch[3:]) >= 80
        pruning = _AMPERE_PRUNING if ampere else _EDGE_PRUNING
        host = tvm_target.host
        host_triple = str(host.attrs.get("mtriple", "")) if host is not None else ""
        cross = _AARCH64_CXX if host_triple.startswith("aarch64") else None
    return TargetPreset("custom", str(tvm_target), tvm_target, cross, pruning)
