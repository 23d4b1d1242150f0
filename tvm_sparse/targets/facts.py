"""Facts of a target that kernels, passes and schedules size themselves by: SIMD width, lanes,
cores."""

from __future__ import annotations

import platform

from tvm.target import Target
from tvm.target.codegen import target_has_features

__all__ = ["is_neon", "num_cores", "vector_bits", "vector_lanes"]


def vector_bits(target: Target) -> int:
    """Width in bits of the widest SIMD register usable for fp32 arithmetic on ``target``.

    ``llvm_get_vector_width`` reports the host's width for some CPUs (512 for haswell), so the
    target's own feature flags decide.
    """
    if target_has_features("avx512f", target):
        return 512
    if target_has_features("avx", target):
        return 256
    return 128  # SSE, NEON, and a safe floor for anything else


def vector_lanes(target: Target, dtype_bits: int = 32) -> int:
    """Number of ``dtype_bits``-wide lanes in one SIMD register of ``target``."""
    return max(vector_bits(target) // dtype_bits, 1)


def num_cores(target: Target) -> int:
    """The target's ``num-cores`` attribute, or 1 when it is not given."""
    cores = target.attrs.get("num-cores")
    return int(cores) if cores else 1


def is_neon(target: Target) -> bool:
    """Whether ``target`` is an AArch64 CPU (NEON: 32 registers of 128 bits), by its triple or,
    without one, by this machine's."""
    if str(target.kind.name) != "llvm":
        return False
    triple = str(target.attrs.get("mtriple", "") or "")
    return triple.startswith("aarch64") or (not triple and platform.machine() == "aarch64")
