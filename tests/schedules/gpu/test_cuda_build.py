"""CUDA builds for the Jetson presets without a GPU: schedule, build, read the CUDA source.

TVM 0.27 keeps CUDA C in the built module (``fmt="cuda"``) and compiles it when the module is
loaded on the device, so these tests compile the source here with ``nvcc`` (when present) for
the preset's architecture and inspect the schedule: every kernel bound to ``blockIdx`` and
``threadIdx``, matmuls staged through ``__shared__`` memory, nothing left on the host CPU.
``sm_72``, which CUDA 13's ``nvcc`` no longer targets, is checked by building the same schedules
with TVM's NVPTX backend and assembling them with CUDA 12's ``ptxas`` (see ``cuda_testing``).
Running on a GPU is the ``gpu``-marked test at the end.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
import torch
import tvm
import zoo
from cuda_testing import (
    device_ptx,
    nvcc,
    nvcc_arches,
    nvptx_build,
    nvptx_target,
    ptxas,
    skip_reason_sm72,
)

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


@functools.cache
def _nvptx_build(name: str, preset: str) -> tvm.runtime.Module:
    """The dense build of ``_build`` with TVM's NVPTX backend instead of CUDA C: the same
    Relax pipeline and GPU schedules (for the preset's CUDA target), PTX for its architecture."""
    model, example = zoo.make(name)
    mod = tvm_sparse.frontend.import_model(model, example).mod
    cuda = tvm_sparse.targets.get_preset(preset).tvm_target()
    with nvptx_build():
        executable = tvm.compile(
            mod,
            nvptx_target(str(cuda.attrs["arch"]), host=cuda.host),
            relax_pipeline=tvm_sparse.pipeline(preset, sparsity="off"),
        )
    return executable.mod


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
def test_kernels_compile_for_the_preset_arch(name, preset, tmp_path):
    arch = PRESETS[preset]
    kernels = set(_kernels(_cuda_source(_build(name, preset))))
    if arch in nvcc_arches():
        built = nvcc(_cuda_source(_build(name, preset)), arch, tmp_path)
    elif arch == "sm_72":  # CUDA 13 dropped Volta: TVM's NVPTX backend and CUDA 12's ptxas
        if reason := skip_reason_sm72():
            pytest.skip(reason)
        built = ptxas(device_ptx(_nvptx_build(name, preset)), arch, tmp_path)
    else:
        pytest.skip(f"no nvcc on PATH that targets {arch}")
    assert set(built) == kernels
    for kernel, resources in built.items():
        assert resources["registers"] <= 255 and resources["smem_bytes"] <= 48 * 1024, kernel


def test_pruned_model_keeps_every_op_on_the_gpu():
    model, (x,) = zoo.make("mlp")
    tvm_sparse.prune(model, (x,), pattern="block", block_shape=(16, 1), sparsity=0.9)
    compiled = tvm_sparse.compile(model, "jetson-orin-nano", example_inputs=(x,))
    assert not _computed_on_host(compiled)
    # pruned layers run the CUDA sparse kernels (threads bound, activations in shared memory)
    sparse = {r.kernel for r in compiled.report.rows if r.kernel.endswith("]")}
    assert {k.split("[")[0] for k in sparse} & {"bsr_matmul", "nm_matmul"}, compiled.report
    kernels = _kernels(_cuda_source(compiled))
    for name in sparse:
        symbol = name.replace("[", "_").replace("]", "").replace(":", "_")
        body = kernels[f"{symbol}_kernel"]
        assert "threadIdx." in body and "__shared__" in body, name
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


@pytest.mark.skipif(tvm.cuda(0).exist, reason="this machine has a CUDA GPU")
def test_a_cuda_build_without_a_gpu_says_so():
    compiled = _build("mlp", "jetson-orin-nano")
    _, (x,) = zoo.make("mlp")
    with pytest.raises(
        RuntimeError, match=r"jetson-orin-nano \(CUDA sm_87\) and this machine has no"
    ):
        compiled(x)
