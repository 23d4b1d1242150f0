"""fp16 and bf16 builds for the Jetson presets (``compile(..., dtype=...)``) without a GPU:
the CUDA source computes in ``half``, every kernel stays on the GPU and compiles with ``nvcc``
for sm_87, dlight's matmul rule reaches tensor cores (``wmma``) on fp16 matmuls large enough
for it, the report gives each op's dtype, and unsupported dtypes fail with a clear error.

The numerics of the converted graph are checked on the CPU in
``tests/passes/test_convert_compute_dtype.py``; on a GPU by the ``gpu``-marked tests here.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import test_cuda_build as dense
import torch
import tvm
import zoo
from cuda_testing import nvcc, nvcc_arches
from torch import nn
from tvm.s_tir.dlight.gpu import matmul as dl_matmul

import tvm_sparse

PRESETS = {"jetson-orin-nano": "sm_87", "jetson-xavier-nx": "sm_72"}
#: fp16 tolerance scaled to the output's magnitude, as in test_convert_compute_dtype.py
FP16_TOL = 1e-2


@functools.cache
def _build(name: str, preset: str, dtype: str = "float16") -> tvm_sparse.CompiledModel:
    model, example = zoo.make(name)
    return tvm_sparse.compile(model, preset, example_inputs=example, sparsity="off", dtype=dtype)


def _linear(dtype: str, target: str | tvm.target.Target = "jetson-orin-nano"):
    """A matmul of 128 x 256 x 256: every extent above the 64 dlight needs for tensor cores."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU()).eval()
    x = torch.randn(128, 256)
    compiled = tvm_sparse.compile(model, target, example_inputs=(x,), sparsity="off", dtype=dtype)
    with torch.no_grad():
        return compiled, x, model(x).numpy()


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_zoo_builds_in_fp16_for_jetson(name, preset):
    compiled = _build(name, preset)
    source = dense._cuda_source(compiled)
    kernels = dense._kernels(source)
    assert kernels and all("threadIdx." in body for body in kernels.values())
    assert any(" half " in body or "half*" in body for body in kernels.values()), "no fp16"
    assert not dense._computed_on_host(compiled)
    rules = {r.kernel.split(" ")[0] for r in compiled.report.rows}
    assert "unscheduled" not in rules and "" not in rules
    report = compiled.report
    assert report.dtype == "float16" and "dtype float16" in report.table()
    heavy = [r for r in report.rows if r.op in ("relax.matmul", "relax.nn.conv2d")]
    assert heavy and all(r.dtype == "float16->float32" for r in heavy), report
    # the model's boundary keeps its dtype
    assert [spec.dtype for spec in compiled.inputs] == ["float32"]


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_fp16_kernels_compile_for_sm87(name, tmp_path):
    if "sm_87" not in nvcc_arches():
        pytest.skip("no nvcc on PATH that targets sm_87")
    source = dense._cuda_source(_build(name, "jetson-orin-nano"))
    built = nvcc(source, "sm_87", tmp_path)
    assert set(built) == set(dense._kernels(source))
    for kernel, resources in built.items():
        assert resources["registers"] <= 255 and resources["smem_bytes"] <= 48 * 1024, kernel


def test_bf16_builds_for_orin(tmp_path):
    compiled = _build("transformer", "jetson-orin-nano", "bfloat16")
    source = dense._cuda_source(compiled)
    assert "nv_bfloat16" in source and not dense._computed_on_host(compiled)
    assert {r.dtype for r in compiled.report.find(op="matmul")} == {"bfloat16->float32"}
    if "sm_87" in nvcc_arches():
        assert nvcc(source, "sm_87", tmp_path)


def test_fp16_matmuls_reach_dlights_tensor_core_rule(monkeypatch):
    """dlight's Matmul, first of the project's CUDA rules, hands an fp16 matmul whose extents
    all exceed 64 to MatmulTensorization (wmma) on sm_70 and newer; the zoo's matmuls are
    smaller and keep its SIMT schedule. The rule is stubbed here (declining, so Matmul
    schedules the kernel itself): its first use in a process imports TVM 0.27's tensor
    intrinsics, which takes minutes; the build with tensor cores is checked on a GPU below."""
    seen = []
    monkeypatch.setattr(
        dl_matmul.MatmulTensorization, "apply", lambda self, func, *_: seen.append(func)
    )
    _linear("float16")
    assert len(seen) == 1
    _linear("float32")
    _build.__wrapped__("transformer", "jetson-orin-nano")
    assert len(seen) == 1


def test_pruned_fp16_model_keeps_fp32_sparse_kernels():
    model, (x,) = zoo.make("mlp")
    tvm_sparse.prune(model, (x,), pattern="block", block_shape=(16, 1), sparsity=0.9)
    compiled = tvm_sparse.compile(model, "jetson-orin-nano", example_inputs=(x,), dtype="float16")
    sparse = [r for r in compiled.report.rows if r.kernel.startswith(("bsr_matmul[", "nm_matmul["))]
    assert sparse, compiled.report
    for row in sparse:
        assert row.dtype == "float32" and "fp32 kernel in this float16 model" in row.reason, row
    assert not dense._computed_on_host(compiled)


@functools.cache
def _two_four_mlp(preset: str) -> tvm_sparse.CompiledModel:
    model, (x,) = zoo.make("mlp")
    tvm_sparse.prune(model, (x,), pattern="2:4")
    return tvm_sparse.compile(model, preset, example_inputs=(x,), dtype="float16")


def test_two_four_fp16_model_runs_mma_sp_on_orin(tmp_path):
    compiled = _two_four_mlp("jetson-orin-nano")
    rows = [r for r in compiled.report.rows if r.kernel == "mma_sp_matmul[2:4]"]
    assert len(rows) == 3, compiled.report  # every Linear of the MLP
    assert all("sparse tensor cores" in r.reason for r in rows)
    source = dense._cuda_source(compiled)
    assert "mma.sp.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32" in source
    assert not dense._computed_on_host(compiled)
    if "sm_87" not in nvcc_arches():
        pytest.skip("no nvcc on PATH that targets sm_87")
    built = nvcc(source, "sm_87", tmp_path)
    mma = {k: v for k, v in built.items() if k.startswith("mma_sp_matmul")}
    assert mma and all(v["spill_bytes"] == 0 for v in mma.values()), built


def test_two_four_pointwise_convs_in_fp16_leave_no_op_without_a_kernel():
    """The cast into a 1x1 conv's mma.sp kernel sits between the channels-last permute and
    its reshape; the fp16 conversion makes it a no-op and drops it: the report says so
    rather than leave an op with FLOPs and no kernel."""
    depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32)  # stays dense, so fp16
    model = nn.Sequential(depthwise, nn.Conv2d(32, 64, 1), nn.ReLU(), nn.Conv2d(64, 32, 1))
    model.eval()
    x = torch.randn(1, 32, 8, 8)
    tvm_sparse.prune(model, (x,), pattern="2:4")
    compiled = tvm_sparse.compile(model, "jetson-orin-nano", example_inputs=(x,), dtype="float16")
    assert compiled.report.find(kernel="mma_sp_matmul[2:4]"), compiled.report
    assert all(r.kernel for r in compiled.report.rows if r.flops), compiled.report
    assert compiled.report.find(kernel="removed"), compiled.report


def test_two_four_fp16_model_keeps_fp32_kernels_on_xavier():
    compiled = _two_four_mlp("jetson-xavier-nx")
    rows = [r for r in compiled.report.rows if r.kernel == "nm_matmul[2:4]"]
    assert len(rows) == 3 and all("fp32 kernel in this float16" in r.reason for r in rows)
    assert "mma.sp" not in dense._cuda_source(compiled)


@pytest.mark.parametrize(
    ("target", "dtype", "message"),
    [
        ("jetson-xavier-nx", "bfloat16", r"'bfloat16' is not supported on sm_72 .*sm_80.*float16"),
        ("x86", "float16", r"'float16' is not supported on .*CPU kernels .* are fp32"),
        ("jetson-orin-nano", "fp16", r"dtype='fp16' is not valid: use one of float32, float16"),
    ],
)
def test_unsupported_dtypes_raise(target, dtype, message):
    with pytest.raises(ValueError, match=message):
        tvm_sparse.pipeline(target, dtype=dtype)
    model, (x,) = zoo.make("mlp")
    with pytest.raises(ValueError, match=message):  # before the model is imported
        tvm_sparse.compile(model, target, example_inputs=(x,), dtype=dtype)


# --- on a GPU ----------------------------------------------------------------------------------


def _assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    tol = FP16_TOL * float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=FP16_TOL, atol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_zoo_runs_in_fp16_on_this_gpu(name):
    target = tvm.target.Target.from_device(tvm.cuda(0))
    model, (x,) = zoo.make(name)
    compiled = tvm_sparse.compile(
        model, target, example_inputs=(x,), sparsity="off", dtype="float16"
    )
    with torch.no_grad():
        expected = model(x).numpy()
    actual = compiled(x).numpy()
    assert actual.dtype == np.float32
    _assert_close(actual, expected)


@pytest.mark.gpu
def test_tensor_core_matmul_runs_on_this_gpu():
    target = tvm.target.Target.from_device(tvm.cuda(0))
    compiled, x, expected = _linear("float16", target)
    # dlight tensorizes from sm_70 on, reading the arch as digits only ("sm_90a" is not)
    if dl_matmul.check_sm_version(str(target.attrs["arch"])) >= 70:
        assert "wmma" in dense._cuda_source(compiled)
    _assert_close(compiled(x).numpy(), expected)
