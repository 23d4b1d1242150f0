"""What each CUDA kernel of a build uses on the GPU, read from NVIDIA's assembler, and the
occupancy that follows.

TVM keeps a CUDA build's kernels as CUDA C (compiled on the device when the module loads), so
how many registers a kernel takes, whether it spills and how much shared memory it holds are
only known once ``ptxas`` has assembled it. :func:`nvcc_resources` compiles CUDA C with the
``nvcc`` on ``PATH`` and :func:`ptxas_resources` assembles PTX (for ``sm_72``, which CUDA 13
dropped, with the ``ptxas`` of the ``nvidia-cuda-nvcc-cu12`` wheel); both read ``-v``'s report.
:func:`occupancy` turns a kernel's registers, shared memory and threads per block into
resident warps per SM, by the rules of NVIDIA's occupancy calculator and the per-SM limits of
:data:`SM_LIMITS` (the CUDA programming guide's table of compute capabilities).
"""

from __future__ import annotations

import functools
import importlib.util
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "SM_LIMITS",
    "KernelResources",
    "Occupancy",
    "SMLimits",
    "cuda12_ptxas",
    "cuda_toolchain",
    "launch_bounds",
    "missing_toolchain",
    "nvcc_arches",
    "nvcc_resources",
    "occupancy",
    "parse_ptxas_report",
    "ptxas_resources",
]


@dataclass(frozen=True)
class SMLimits:
    """Per-SM limits of one compute capability, as the occupancy calculator uses them.

    Parameters
    ----------
    max_warps, max_blocks : int
        Resident warps and thread blocks per SM.
    registers : int
        32-bit registers per SM, split evenly among ``partitions`` warp schedulers; a warp's
        registers (``registers per thread x 32``, rounded up to ``register_unit``) come from
        one partition.
    smem_per_sm : int
        Shared memory an SM can give to blocks, in bytes (the largest carveout).
    smem_unit, smem_reserved : int
        A block's shared memory is rounded up to ``smem_unit`` bytes after adding the
        ``smem_reserved`` bytes the driver keeps per block.
    """

    max_warps: int
    max_blocks: int
    registers: int = 65536
    register_unit: int = 256
    partitions: int = 4
    smem_per_sm: int = 0
    smem_unit: int = 256
    smem_reserved: int = 0


#: The Jetson architectures: ``sm_72`` (Xavier, Volta) and ``sm_87`` (Orin, Ampere).
SM_LIMITS: dict[str, SMLimits] = {
    "sm_72": SMLimits(max_warps=64, max_blocks=32, smem_per_sm=96 * 1024, smem_unit=256),
    "sm_87": SMLimits(
        max_warps=48, max_blocks=16, smem_per_sm=164 * 1024, smem_unit=128, smem_reserved=1024
    ),
}


@dataclass(frozen=True)
class KernelResources:
    """What one kernel takes on the GPU (``ptxas -v``), and its block size where known.

    Parameters
    ----------
    name : str
        The kernel's symbol.
    registers : int
        Registers per thread.
    spill_stores, spill_loads : int
        Bytes stored to and loaded from local memory for spilled registers.
    smem_bytes : int
        Static shared memory per block.
    threads : int
        Threads per block (``__launch_bounds__`` / ``.maxntid``); 0 where unknown.
    """

    name: str
    registers: int
    spill_stores: int = 0
    spill_loads: int = 0
    smem_bytes: int = 0
    threads: int = 0


@dataclass(frozen=True)
class Occupancy:
    """Resident warps of a kernel per SM, out of the most an SM holds, and what limits them."""

    warps: int
    max_warps: int
    blocks: int
    limited_by: str

    @property
    def fraction(self) -> float:
        return self.warps / self.max_warps

    def __str__(self) -> str:
        return f"{self.warps}/{self.max_warps} warps ({self.fraction:.0%}, {self.limited_by})"


def occupancy(kernel: KernelResources, arch: str) -> Occupancy:
    """Warps of ``kernel`` resident per SM on ``arch`` (NVIDIA's occupancy calculator).

    Blocks per SM are the fewest that warps, registers, shared memory and the block limit
    allow: registers are allocated per warp in ``register_unit`` steps from one of the SM's
    partitions; shared memory per block is rounded up after the driver's reserve.

    Raises
    ------
    ValueError
        If ``arch`` has no entry in :data:`SM_LIMITS` or the kernel's block size is unknown.
    """
    if arch not in SM_LIMITS:
        raise ValueError(f"no SM limits for {arch!r}: known are {', '.join(sorted(SM_LIMITS))}")
    if kernel.threads <= 0:
        raise ValueError(f"{kernel.name}: threads per block unknown, no occupancy")
    sm = SM_LIMITS[arch]
    warps_per_block = -(-kernel.threads // 32)
    limits = {"warps": sm.max_warps // warps_per_block, "blocks": sm.max_blocks}
    if kernel.registers:
        per_warp = -(-kernel.registers * 32 // sm.register_unit) * sm.register_unit
        warps = sm.partitions * (sm.registers // sm.partitions // per_warp)
        limits["registers"] = warps // warps_per_block
    if kernel.smem_bytes:
        unit = sm.smem_unit
        per_block = -(-(kernel.smem_bytes + sm.smem_reserved) // unit) * unit
        limits["shared memory"] = sm.smem_per_sm // per_block
    blocks = min(limits.values())
    limited_by = " and ".join(name for name, n in limits.items() if n == blocks)
    return Occupancy(blocks * warps_per_block, sm.max_warps, blocks, f"{limited_by} limit")


# -- reading ptxas -v ------------------------------------------------------------------------

_ENTRY = re.compile(r"ptxas info\s+: Compiling entry function '(\w+)'")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse_ptxas_report(report: str) -> dict[str, KernelResources]:
    """``{kernel: KernelResources}`` from the text ``ptxas -v`` (or ``nvcc -Xptxas -v``)
    writes; threads per block are not in it (0)."""
    out = {}
    for block in re.split(r"(?=ptxas info\s+: Compiling entry function)", report):
        entry, spills, used = _ENTRY.search(block), _SPILLS.search(block), _USED.search(block)
        if entry and used:
            stores, loads = (int(spills.group(1)), int(spills.group(2))) if spills else (0, 0)
            out[entry.group(1)] = KernelResources(
                entry.group(1), int(used.group(1)), stores, loads, int(used.group(2) or 0)
            )
    return out


_LAUNCH_BOUNDS = re.compile(r'extern "C" __global__ void __launch_bounds__\((\d+)\) (\w+)\(')
_MAXNTID = re.compile(r"\.entry (\w+)\([^)]*\)\s*\.maxntid (\d+), (\d+), (\d+)", re.S)


def launch_bounds(source: str) -> dict[str, int]:
    """``{kernel: threads per block}`` from the ``__launch_bounds__`` TVM writes into CUDA C,
    or the ``.maxntid`` of PTX."""
    found = {name: int(n) for n, name in _LAUNCH_BOUNDS.findall(source)}
    for name, x, y, z in _MAXNTID.findall(source):
        found[name] = int(x) * int(y) * int(z)
    return found


# -- toolchains ------------------------------------------------------------------------------


@functools.cache
def nvcc_arches() -> frozenset[str]:
    """``sm_XY`` architectures the ``nvcc`` on ``PATH`` compiles for (empty without one)."""
    if shutil.which("nvcc") is None:
        return frozenset()
    listed = subprocess.run(
        ["nvcc", "--list-gpu-arch"], capture_output=True, text=True, check=False
    ).stdout
    return frozenset(a.replace("compute_", "sm_") for a in listed.split())


@functools.cache
def cuda12_ptxas() -> Path | None:
    """The ``ptxas`` of the ``nvidia-cuda-nvcc-cu12`` wheel (CUDA 12, which still assembles
    for ``sm_72``), where installed."""
    spec = importlib.util.find_spec("nvidia.cuda_nvcc")
    if spec is None or not spec.submodule_search_locations:
        return None
    ptxas = Path(next(iter(spec.submodule_search_locations))) / "bin" / "ptxas"
    return ptxas if ptxas.is_file() else None


def cuda_toolchain(arch: str) -> str | None:
    """Which compiler reads CUDA C for ``arch`` here (``"nvcc"``), or ``None``."""
    return "nvcc" if arch in nvcc_arches() else None


def missing_toolchain(arch: str) -> str:
    """Why this machine cannot compile CUDA C for ``arch``, and what to install."""
    if shutil.which("nvcc") is None:
        return "no nvcc on PATH (install the CUDA toolkit)"
    if arch == "sm_72":
        return "the nvcc on PATH does not target sm_72 (CUDA 13 dropped Volta; use CUDA 12's)"
    return f"the nvcc on PATH does not target {arch}"


def nvcc_resources(
    source: str, arch: str, workdir: str | Path | None = None
) -> dict[str, KernelResources]:
    """Compile CUDA C for ``arch`` with ``nvcc -cubin -Xptxas -v``; each kernel's resources.

    Raises
    ------
    RuntimeError
        If ``nvcc`` is missing or does not target ``arch`` (the message says which), or the
        source does not compile (with the compiler's message).
    """
    if arch not in nvcc_arches():
        raise RuntimeError(f"cannot compile CUDA C for {arch}: {missing_toolchain(arch)}")
    resources = _run(["nvcc", f"-arch={arch}", "-cubin", "-Xptxas", "-v"], source, ".cu", workdir)
    return _with_threads(resources, launch_bounds(source))


def ptxas_resources(
    ptx: str, arch: str, workdir: str | Path | None = None
) -> dict[str, KernelResources]:
    """Assemble PTX for ``arch`` with ``ptxas -v``: the ``nvidia-cuda-nvcc-cu12`` wheel's where
    installed (it targets ``sm_72``), else the one beside ``nvcc``; each kernel's resources.

    Raises
    ------
    RuntimeError
        If no ``ptxas`` is found, or the PTX does not assemble (with the assembler's message).
    """
    ptxas = cuda12_ptxas() or shutil.which("ptxas")
    if ptxas is None:
        raise RuntimeError(
            "no ptxas: install the CUDA toolkit, or `pip install nvidia-cuda-nvcc-cu12==12.6.*`"
        )
    resources = _run([str(ptxas), f"-arch={arch}", "-v"], ptx, ".ptx", workdir)
    return _with_threads(resources, launch_bounds(ptx))


def _run(
    command: list[str], text: str, suffix: str, workdir: str | Path | None
) -> dict[str, KernelResources]:
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        source, cubin = Path(tmp) / f"kernels{suffix}", Path(tmp) / "kernels.cubin"
        source.write_text(text)
        result = subprocess.run(
            [*command, str(source), "-o", str(cubin)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode != 0 or not cubin.is_file() or cubin.stat().st_size == 0:
            raise RuntimeError(f"{Path(command[0]).name} failed:\n{result.stderr[-3000:]}")
    return parse_ptxas_report(result.stderr + result.stdout)


def _with_threads(
    resources: dict[str, KernelResources], threads: dict[str, int]
) -> dict[str, KernelResources]:
    return {
        name: KernelResources(
            r.name, r.registers, r.spill_stores, r.spill_loads, r.smem_bytes, threads.get(name, 0)
        )
        for name, r in resources.items()
    }
