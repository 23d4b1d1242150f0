"""CUDA builds for the Jetson presets without a GPU: schedule, build, read the CUDA source.

TVM 0.27 keeps CUDA C in the built module (``fmt="cuda"``) and compiles it when the module is
loaded on the device, so these tests compile the source here with ``nvcc`` (when present) for
the preset's architecture and inspect the schedule: every kernel bound to ``blockIdx`` and
``threadIdx``, matmuls staged through ``__shared__`` memory, nothing left on the host CPU.
Running on a GPU is the ``gpu``-marked test at the end.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
import tvm
import zoo

import tvm_sparse

PRESETS = {"jetson-orin-nano": "sm_87", "jetson-xavier-nx": "sm_72"}
RTOL, ATOL = 1e-4, 1e-4
_KERNEL_HEAD = re.compile(r'extern "C" __global__ void(?: __launch_bounds__\(\d+\))? (\w+)\(')


@functools.cache
def _build(name: str, preset: str) -> tvm_sparse.CompiledModel:
    """A dense build: the schedules under test, without the (CPU-only) sparse kernels."""
    model, example = zoo.make(name)
    return tvm_sparse.compile(model, preset, example_inputs=example, sparsity="off")


def _modules(compiled: tvm_sparse.CompiledModel) -> tuple[tvm.runtime.Module, tvm.runtime.Module]:
    """The host (llvm) module and the CUDA module it imports."""
    (host,) = compiled.executable.mod.imports
    (cuda,) = [m for m in host.imports if m.kind == "cuda"]
    return host, cuda


def _cuda_source(compiled: tvm_sparse.CompiledModel) -> str:
    return _modules(compiled)[1].inspect_source("")


def _kernels(source: str) -> dict[str, str]:
    """``{kernel name: its source text}``, split at each ``__global__`` definition."""
    heads = list(_KERNEL_HEAD.finditer(source))
    ends = [h.start() for h in heads[1:]] + [len(source)]
    return {h.group(1): source[h.start() : end] for h, end in zip(heads, ends, strict=True)}


def _host_prim_funcs(compiled: tvm_sparse.CompiledModel) -> set[str]:
    """PrimFuncs the host module exposes (each launches kernels or computes on the CPU)."""
    ll = _modules(compiled)[0].inspect_source("ll")
    return set(re.findall(r"define [^@]*@__tvm_ffi_(\w+)\(", ll))


def _computed_on_host(compiled: tvm_sparse.CompiledModel) -> list[str]:
    """PrimFuncs with no CUDA kernel: their loops were compiled for the host CPU."""
    kernels = _kernels(_cuda_source(compiled))
    return sorted(
        func
        for func in _host_prim_funcs(compiled)
        if not any(k == f"{func}_kernel" or k.startswith(f"{func}_kernel_") for k in kernels)
    )


def _nvcc_arches() -> set[str]:
    if shutil.which("nvcc") is None:
        return set()
    listed = subprocess.run(
        ["nvcc", "--list-gpu-arch"], capture_output=True, text=True, check=False
    ).stdout
    return {a.replace("compute_", "sm_") for a in listed.split()}


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_zoo_builds_for_jetson_with_gpu_schedules(name, preset):
    compiled = _build(name, preset)
    assert compiled.target.kind.name == "cuda"
    assert str(compiled.target.attrs["arch"]) == PRESETS[preset]
    assert str(compiled.target.host.attrs["mtriple"]).startswith("aarch64")
    kernels = _kernels(_cuda_source(compiled))
    assert kernels, "no __global__ kernel in the CUDA source"
    # A one-block grid has no blockIdx in its code; every kernel uses threadIdx.
    unbound = [k for k, body in kernels.items() if "threadIdx." not in body]
    assert not unbound, f"kernels not bound to threads: {unbound}"
    assert any("blockIdx." in body for body in kernels.values())
    assert not _computed_on_host(compiled)
    rules = {r.kernel.split(" ")[0] for r in compiled.report.rows}
    assert "unscheduled" not in rules and "" not in rules
    assert rules <= {"Matmul", "GEMV", "Reduction", "GeneralReduction", "Fallback"}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_matmul_kernels_stage_tiles_in_shared_memory(preset):
    compiled = _build("transformer", preset)
    kernels = _kernels(_cuda_source(compiled))
    matmuls = {r.fused_into for r in compiled.report.rows if r.kernel == "Matmul" and r.fused_into}
    assert matmuls, f"no op scheduled by the Matmul rule:\n{compiled.report}"
    for func in matmuls:
        body = kernels[f"{func}_kernel"]
        assert "__shared__" in body and "__syncthreads()" in body, f"{func}: no shared tiles"


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_cuda_source_compiles_with_nvcc(name, preset, tmp_path):
    arch = PRESETS[preset]
    arches = _nvcc_arches()
    if not arches:
        pytest.skip("nvcc is not on PATH")
    if arch not in arches:
        pytest.skip(f"this nvcc cannot target {arch} (CUDA 13 dropped Volta); it has {arches}")
    source = tmp_path / f"{name}.cu"
    source.write_text(_cuda_source(_build(name, preset)))
    result = subprocess.run(
        ["nvcc", f"-arch={arch}", "-cubin", "-o", str(tmp_path / f"{name}.cubin"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / f"{name}.cubin").stat().st_size > 0


def test_pruned_model_keeps_every_op_on_the_gpu():
    model, (x,) = zoo.make("mlp")
    tvm_sparse.prune(model, (x,), pattern="block", block_shape=(16, 1), sparsity=0.9)
    compiled = tvm_sparse.compile(model, "jetson-orin-nano", example_inputs=(x,))
    assert not _computed_on_host(compiled)
    assert not compiled.report.find(kernel="bsr_matmul")
    # zero channels are removed on any target; what stays gets a dense GPU kernel and a reason
    assert compiled.report.find(kernel="(shrunk)")


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_zoo_runs_on_this_gpu(name):
    target = tvm.target.Target.from_device(tvm.cuda(0))
    model, (x,) = zoo.make(name)
    compiled = tvm_sparse.compile(model, target, example_inputs=(x,), sparsity="off")
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(compiled(x).numpy(), expected, rtol=RTOL, atol=ATOL)
