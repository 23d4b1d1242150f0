"""GPU resources of CUDA kernels: ptxas's report read, occupancy against hand-computed
values, the sparse kernels free of spills on sm_72 and sm_87, and the compile report's table."""

from __future__ import annotations

import numpy as np
import pytest
import zoo
from cuda_testing import (
    build,
    cuda_source,
    device_ptx,
    nvptx_build,
    nvptx_target,
    skip_reason_sm72,
)

import tvm_sparse
from tvm_sparse.kernels import to_bsr, to_nm
from tvm_sparse.kernels.gpu import cuda_bsr_matmul, cuda_nm_matmul
from tvm_sparse.measure import block_mask, nm_mask
from tvm_sparse.report import CompileReport
from tvm_sparse.targets.cuda_resources import (
    KernelResources,
    launch_bounds,
    nvcc_arches,
    nvcc_resources,
    occupancy,
    parse_ptxas_report,
    ptxas_resources,
)

#: What ``ptxas -v`` (CUDA 12) writes for two kernels, one of them spilling.
PTXAS_REPORT = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'fused_matmul_kernel' for 'sm_87'
ptxas info    : Function properties for fused_matmul_kernel
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 64 registers, used 1 barriers, 8704 bytes smem, 400 bytes cmem[0]
ptxas info    : Compiling entry function 'add_kernel' for 'sm_87'
ptxas info    : Function properties for add_kernel
    24 bytes stack frame, 24 bytes spill stores, 16 bytes spill loads
ptxas info    : Used 255 registers, 368 bytes cmem[0]
"""


def test_parse_ptxas_report():
    parsed = parse_ptxas_report(PTXAS_REPORT)
    assert parsed == {
        "fused_matmul_kernel": KernelResources("fused_matmul_kernel", 64, 0, 0, 8704),
        "add_kernel": KernelResources("add_kernel", 255, 24, 16, 0),
    }


def test_launch_bounds_from_cuda_c_and_ptx():
    cuda = 'extern "C" __global__ void __launch_bounds__(256) main_kernel(float* x) {'
    ptx = ".visible .entry main_kernel(\n\t.param .u64 p0\n)\n.maxntid 64, 2, 1\n{"
    assert launch_bounds(cuda) == {"main_kernel": 256}
    assert launch_bounds(ptx) == {"main_kernel": 128}


@pytest.mark.parametrize(
    "arch, threads, registers, smem, warps, limited_by",
    [
        # 8 warps a block; 32 regs x 32 = 1024 a warp, a partition of 16384 holds 16, so 64
        # warps by registers; 48 / 8 = 6 blocks by warps: 48 of 48 warps
        ("sm_87", 256, 32, 0, 48, "warps limit"),
        # 64 regs: 2048 a warp, 8 a partition, 32 warps = 4 blocks of 8: 32 of 48
        ("sm_87", 256, 64, 0, 32, "registers limit"),
        # 4 warps a block; 40 regs: 1280 a warp, 12 a partition = 48 warps = 12 blocks;
        # 20480 B + 1 KiB reserved = 21504 B, 167936 / 21504 = 7 blocks: 28 of 48
        ("sm_87", 128, 40, 20480, 28, "shared memory limit"),
        # Volta keeps no reserve, 256 B units: 98304 / 20480 = 4 blocks: 16 of 64 warps
        ("sm_72", 128, 40, 20480, 16, "shared memory limit"),
        # 32 threads, few registers: the 32 blocks an SM holds bound it, 32 of 64 warps
        ("sm_72", 32, 16, 0, 32, "blocks limit"),
        # 168 regs round to 5376 a warp: 3 a partition, 12 warps, 1 block of 8 warps
        ("sm_72", 256, 168, 0, 8, "registers limit"),
    ],
)
def test_occupancy_matches_hand_computed_values(arch, threads, registers, smem, warps, limited_by):
    occ = occupancy(KernelResources("k", registers, smem_bytes=smem, threads=threads), arch)
    assert occ.warps == warps
    assert occ.limited_by == limited_by
    assert occ.max_warps == {"sm_72": 64, "sm_87": 48}[arch]


def test_occupancy_needs_a_known_arch_and_block_size():
    with pytest.raises(ValueError, match="no SM limits for 'sm_90'"):
        occupancy(KernelResources("k", 32, threads=128), "sm_90")
    with pytest.raises(ValueError, match="threads per block unknown"):
        occupancy(KernelResources("k", 32), "sm_87")


# The BERT-base FFN's two layers at 128 tokens, in the kernels and patterns the GPU rule picks.
FFN = [(128, 768, 3072), (128, 3072, 768)]
KERNELS = ["bsr:16x1", "bsr:8x1", "nm:2:4", "nm:4:8"]


def _sparse_kernel(kind: str, m: int, k: int, n: int):
    rng = np.random.default_rng(0)
    if kind.startswith("bsr"):
        block = tuple(int(v) for v in kind[4:].split("x"))
        weight = (rng.standard_normal((n, k)) * block_mask(n, k, block, 0.1, rng)).astype("float32")
        bsr = to_bsr(weight, block)
        return cuda_bsr_matmul(m, k, n, block, bsr.nnzb, bsr.indptr.shape[0] - 1)
    nm = tuple(int(v) for v in kind[3:].split(":"))
    mat = to_nm((rng.standard_normal((n, k)) * nm_mask(n, k, nm, rng)).astype("float32"), nm)
    return cuda_nm_matmul(m, k, n, nm, mat.values.shape[0])


def _assembled(func, arch: str, tmp_path) -> KernelResources:
    if arch == "sm_87":
        if arch not in nvcc_arches():
            pytest.skip("no nvcc that targets sm_87 on PATH")
        (resources,) = nvcc_resources(cuda_source(func), arch, tmp_path).values()
        return resources
    if reason := skip_reason_sm72():
        pytest.skip(reason)
    with nvptx_build():
        lib = build(func, nvptx_target(arch))
    ptx = device_ptx(lib.mod, launch_bounds(cuda_source(func)))
    (resources,) = ptxas_resources(ptx, arch, tmp_path).values()
    return resources


@pytest.mark.parametrize("arch", ["sm_72", "sm_87"])
@pytest.mark.parametrize("kind", KERNELS)
@pytest.mark.parametrize("m, k, n", FFN)
def test_sparse_kernels_do_not_spill(kind, m, k, n, arch, tmp_path):
    resources = _assembled(_sparse_kernel(kind, m, k, n), arch, tmp_path)
    assert resources.spill_stores == 0 and resources.spill_loads == 0, resources
    assert resources.threads > 0 and resources.smem_bytes > 0
    # every kernel keeps at least a quarter of the SM's warps resident
    assert occupancy(resources, arch).fraction >= 0.25, occupancy(resources, arch)


def test_the_compile_report_has_each_kernels_gpu_resources(tmp_path):
    model, (x,) = zoo.make("mlp")
    tvm_sparse.prune(model, (x,), pattern="n:m", n_m=(2, 4))
    compiled = tvm_sparse.compile(model, "jetson-orin-nano", example_inputs=(x,))
    if "sm_87" not in nvcc_arches():
        assert not compiled.gpu_resources()
        assert any("GPU resources per kernel not measured" in n for n in compiled.report.notes)
        return
    rows = compiled.gpu_resources()
    kernels = {r.kernel for r in rows}
    source = tvm_sparse.gpu_resources.cuda_source(compiled.executable)
    assert kernels == set(launch_bounds(source))
    assert any(k.startswith("nm_matmul") for k in kernels), kernels
    for row in rows:
        assert row.arch == "sm_87" and row.registers > 0 and row.threads > 0
        assert 0 < row.warps <= row.max_warps == 48
    table = compiled.report.table()
    assert "| kernel | arch | registers |" in table and "warps (" in table
    assert any("GPU resources of" in n for n in compiled.report.notes)
    again = CompileReport.from_dict(compiled.report.to_dict())
    assert again.gpu_kernels == compiled.report.gpu_kernels
    assert compiled.gpu_resources() is compiled.report.gpu_kernels  # computed once


def test_a_missing_toolchain_is_said_in_the_report(monkeypatch):
    from tvm_sparse.targets import cuda_resources

    monkeypatch.setattr(cuda_resources, "nvcc_arches", lambda: frozenset())
    monkeypatch.setattr(tvm_sparse.gpu_resources, "nvcc_arches", lambda: frozenset())
    monkeypatch.setattr(cuda_resources.shutil, "which", lambda _name: None)
    model, (x,) = zoo.make("mlp")
    monkeypatch.setenv("TVM_SPARSE_GPU_RESOURCES", "1")
    compiled = tvm_sparse.compile(model, "jetson-xavier-nx", example_inputs=(x,), sparsity="off")
    assert compiled.report.gpu_kernels == []
    (note,) = [n for n in compiled.report.notes if "GPU resources" in n]
    assert "not measured: no nvcc on PATH (install the CUDA toolkit)" in note
