"""Whether code built for a target runs on this machine.

Matching the triple's architecture is not enough: a library built for ``mcpu=skylake-avx512``
dies with SIGILL on an AVX2-only x86 host. So the target's CPU features (LLVM's feature set of
its ``mcpu``, with ``mattr`` applied) are compared with the host's (LLVM's feature set of the
CPU that LLVM detects here, cross-checked with the flags the kernel reports, since a hypervisor
can hide features that the CPU model has).
"""

from __future__ import annotations

import os
import platform
import re
from functools import cache

from tvm.target import Target, codegen

from .backend import CPU, backend_of

__all__ = [
    "host_clock_ghz",
    "host_cpu_features",
    "is_host_target",
    "machine_key",
    "missing_host_features",
]

# Only ISA extensions that LLVM emits instructions for count. LLVM's feature sets also hold
# tuning flags (``fast-gather``, ``slow-3ops-lea``, ``fuse-aes``...) and system features that
# differ between CPU models of the same ISA level without making code fail to run.
_CODEGEN_FEATURES = re.compile(
    r"(avx.*|sse.*|ssse3|fma4?|xop|f16c|bmi2?|lzcnt|popcnt|movbe|adx|pclmul|vpclmulqdq|vaes"
    r"|gfni|evex512|amx-.*"  # x86
    r"|neon|fp-armv8|fullfp16|fp16fml|dotprod|i8mm|bf16|sve.*|sme.*|crc|lse|rdm"  # aarch64
    r")"
)

# LLVM feature name -> the flag Linux lists in /proc/cpuinfo, where the two are not the same
# name once ``.``, ``-`` and ``_`` are dropped. ``None``: the kernel has no flag for it (an
# LLVM-only notion), so LLVM's answer stands.
_CPUINFO_NAMES: dict[str, str | None] = {
    "sse3": "pni",
    "pclmul": "pclmulqdq",
    "bmi": "bmi1",
    "lzcnt": "abm",
    "evex512": None,
    "neon": "asimd",
    "fp-armv8": "fp",
    "fullfp16": "asimdhp",
    "fp16fml": "asimdfhm",
    "dotprod": "asimddp",
    "rdm": "asimdrdm",
    "crc": "crc32",
    "lse": "atomics",
    "sve2-aes": "sveaes",
    "sve2-bitperm": "svebitperm",
    "sve2-sha3": "svesha3",
    "sve2-sm4": "svesm4",
}

# Spellings of one architecture: platform.machine() and LLVM triples differ between systems.
_ARCH_ALIASES = {"amd64": "x86_64", "x86-64": "x86_64", "arm64": "aarch64"}

# target string -> missing features; a plain dict: a race only computes one entry twice.
_cache: dict[str, tuple[str, ...]] = {}


def _normalize(name: str) -> str:
    return re.sub(r"[._-]", "", name.lower())


def _arch(name: str) -> str:
    name = name.lower()
    return _ARCH_ALIASES.get(name, name)


def host_arch() -> str:
    """This process's architecture, spelled as in an LLVM triple (``x86_64``, ``aarch64``)."""
    return _arch(platform.machine())


def target_arch(target: Target) -> str:
    """The architecture of an llvm target's triple; the host's when it sets none."""
    triple = str(target.attrs.get("mtriple", "") or "")
    return _arch(triple.split("-")[0]) if triple else host_arch()


@cache
def _cpuinfo_flags() -> frozenset[str] | None:
    """The CPU flags Linux reports, normalized; ``None`` where there is no /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                # x86 calls the line "flags", aarch64 "Features"; all cores list the same.
                if key.strip().lower() in ("flags", "features"):
                    return frozenset(_normalize(flag) for flag in value.split())
    except OSError:
        pass
    return None


def _kernel_reports(feature: str, flags: frozenset[str]) -> bool:
    name = _CPUINFO_NAMES.get(feature, feature)
    return name is None or _normalize(name) in flags


def _codegen_features(features: set[str]) -> set[str]:
    return {f for f in features if _CODEGEN_FEATURES.fullmatch(f)}


@cache
def host_cpu_features() -> frozenset[str]:
    """The code-generation features of this machine's CPU, in LLVM's names.

    LLVM detects the host CPU model (``llvm_get_system_cpu``); TVM gives that model's feature
    set. On Linux a feature the kernel does not list in /proc/cpuinfo is dropped: virtual
    machines often hide AVX-512 or AMX from a CPU model that has them, and the kernel must
    also enable the register state of some (AMX) before they can be used.
    """
    host = Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()})
    features = _codegen_features(codegen.llvm_get_cpu_features(host))
    flags = _cpuinfo_flags()
    if flags is not None:
        features = {f for f in features if _kernel_reports(f, flags)}
    return frozenset(features)


def _compute_missing(target: Target) -> tuple[str, ...]:
    if backend_of(target, allow_none=True) is not CPU:
        # Not CPU code at all (cuda...): the kind is what this host lacks.
        return (target.kind.name,)
    arch = target_arch(target)
    if arch != host_arch():
        # LLVM's feature names are per architecture; comparing them across ISAs is meaningless.
        return (arch,)
    needed = _codegen_features(codegen.llvm_get_cpu_features(target))
    return tuple(sorted(needed - host_cpu_features()))


def missing_host_features(target: Target) -> list[str]:
    """The CPU features that code built for ``target`` needs and this machine lacks.

    The target's features are those of its ``mcpu`` with its ``mattr`` applied, as LLVM knows
    them; only instruction-set extensions count (``avx512f``, ``avx2``, ``fma``, ``amx-tile``,
    ``neon``, ``sve``...), not tuning flags. The result is cached per target string.

    Parameters
    ----------
    target : tvm.target.Target
        The target (for a GPU target, pass ``target.host`` to ask about its host code).

    Returns
    -------
    list[str]
        Sorted LLVM feature names; empty when the code runs here. For a target of another
        architecture the list is that architecture (``["aarch64"]``), and for a non-CPU target
        its kind (``["cuda"]``), so that an empty list always means "runs here".
    """
    key = str(target)
    missing = _cache.get(key)
    if missing is None:
        missing = _cache[key] = _compute_missing(target)
    return list(missing)


def is_host_target(target: Target) -> bool:
    """Whether code built for ``target`` runs on this machine: an llvm target of this
    architecture whose CPU features this machine all has."""
    return not missing_host_features(target)


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask, which containers and ``taskset``
    restrict), at most one per physical core: two threads of one core share its vector
    units, so a second thread per core only adds contention to these kernels."""
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or logical
    except ImportError:  # pragma: no cover - psutil is a dependency
        physical = logical
    return max(1, min(logical or 1, physical))


@cache
def machine_key() -> str:
    """This machine as timings know it: LLVM's name for its CPU, the CPU model line the kernel
    reports, and the cores this process may use. A timing or calibration measured under
    another key (another CPU, or fewer cores) is not evidence here."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith(("model name", "CPU part"))), "")  # fmt: skip
    except OSError:
        pass
    return f"{codegen.llvm_get_system_cpu()}|{model}|{available_cores()}"


@cache
def host_clock_ghz() -> float:
    """The clock Linux reports for this machine's cores (the highest), in GHz; 0 if unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            mhz = [float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")]
    except (OSError, ValueError):
        return 0.0
    return max(mhz) / 1000 if mhz else 0.0
