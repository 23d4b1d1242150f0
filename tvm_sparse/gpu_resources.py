"""The GPU resources of a CUDA build, in its compile report.

:func:`add_gpu_resources` compiles the CUDA C of a built model for its architecture here, as
the device will when it loads the module, and adds each kernel's registers, spills, shared
memory and estimated occupancy to ``compiled.report.gpu_kernels``
(:mod:`tvm_sparse.targets.cuda_resources`); where this machine has no compiler for the
architecture, the report's notes say what is missing. ``tvm_sparse.compile`` calls it for
CUDA targets (``TVM_SPARSE_GPU_RESOURCES=0`` turns that off, as the test suite does).
"""

from __future__ import annotations

from typing import Any

import tvm

from .report import GPUKernelRecord
from .targets.backend import CUDA, backend_of
from .targets.cuda_resources import (
    SM_LIMITS,
    KernelResources,
    missing_toolchain,
    nvcc_arches,
    nvcc_resources,
    occupancy,
)

__all__ = ["GPU_RESOURCES_ENV", "add_gpu_resources", "cuda_source", "gpu_kernel_records"]

#: Set to ``0`` to leave the GPU resource table out of CUDA compiles (it runs ``nvcc``).
GPU_RESOURCES_ENV = "TVM_SPARSE_GPU_RESOURCES"


def cuda_source(executable: Any) -> str | None:
    """The CUDA C of a built module's device code (``None`` where it holds none)."""
    stack = [executable.mod if hasattr(executable, "mod") else executable]
    while stack:
        module = stack.pop()
        if module.kind == "cuda":
            return module.inspect_source("")
        stack.extend(module.imports)
    return None


def gpu_kernel_records(resources: dict[str, KernelResources], arch: str) -> list[GPUKernelRecord]:
    """Report rows for ``resources`` assembled for ``arch``, with their occupancy where the
    block size is known and :data:`~tvm_sparse.targets.cuda_resources.SM_LIMITS` has the
    architecture."""
    records = []
    for name in sorted(resources):
        r = resources[name]
        occ = occupancy(r, arch) if r.threads and arch in SM_LIMITS else None
        records.append(
            GPUKernelRecord(
                name,
                arch,
                r.registers,
                r.spill_stores,
                r.spill_loads,
                r.smem_bytes,
                r.threads,
                occ.warps if occ else 0,
                occ.max_warps if occ else 0,
                occ.limited_by if occ else "",
            )  # fmt: skip
        )
    return records


def add_gpu_resources(compiled: Any) -> list[GPUKernelRecord]:
    """Fill ``compiled.report.gpu_kernels`` for a CUDA build (no-op for other targets, and
    where it is filled already); a note says how they were obtained or why they are missing.

    Returns
    -------
    list[GPUKernelRecord]
        The rows (empty where the toolchain is missing or the target is not CUDA).
    """
    report = compiled.report
    target: tvm.target.Target = compiled.target
    if backend_of(target, allow_none=True) is not CUDA or report.gpu_kernels:
        return report.gpu_kernels
    arch = str(target.attrs.get("arch", ""))
    source = cuda_source(compiled.executable)
    if source is None:
        report.notes.append("GPU resources: no CUDA source in the built module")
        return []
    if arch not in nvcc_arches():
        report.notes.append(
            f"GPU resources per kernel not measured: {missing_toolchain(arch)}; "
            "`nvcc -arch=... -Xptxas -v` on the device gives them"
        )
        return []
    try:
        resources = nvcc_resources(source, arch)
    except RuntimeError as err:
        report.notes.append(f"GPU resources: the CUDA source did not compile for {arch}: {err}")
        return []
    report.gpu_kernels = gpu_kernel_records(resources, arch)
    spilling = [k.kernel for k in report.gpu_kernels if k.spill_stores or k.spill_loads]
    report.notes.append(
        f"GPU resources of {len(resources)} kernels from nvcc for {arch}"
        + (f"; spilling registers: {', '.join(spilling)}" if spilling else ", none spills")
    )
    return report.gpu_kernels
