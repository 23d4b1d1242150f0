"""The fp16 2:4 sparse-tensor-core kernel: its data movement on the CPU with the NumPy model of
mma.sp in place of the instruction, the CUDA build (mma.sp in the source, nvcc for sm_87 without
spills), and a run on a GPU where there is one."""

import numpy as np
import pytest
from cuda_testing import cuda_source, nvcc, nvcc_arches, run_on_cpu, run_on_gpu
from mma_sp_emulator import two_four

from tvm_sparse.kernels.gpu import MMASpKnobs, cuda_mma_sp_matmul, to_mma_sp
from tvm_sparse.kernels.gpu.tiling import MAX_SHARED_BYTES


def _problem(m, k, n, seed=0):
    rng = np.random.default_rng(seed)
    weight = two_four(n, k, rng)
    x = rng.uniform(-1, 1, (m, k)).astype("float16")
    return x, weight, to_mma_sp(weight)


def _args(x, mat, n, out_dtype):
    return x[None], mat.values, mat.metadata, np.zeros((1, x.shape[0], n), out_dtype)


def _reference(x, weight):
    return x.astype("float64") @ weight.astype("float64").T


@pytest.mark.parametrize(
    "m, k, n",
    [
        (16, 64, 32),  # whole mma tiles
        (37, 70, 100),  # ragged M and N, K % 8 == 6: half2 copies
        (1, 36, 9),  # one row, K % 8 == 4
        (5, 33, 17),  # odd K: scalar copies, a partial group of four
        (130, 96, 64),  # several CTAs along M
    ],
)
def test_data_movement_with_emulated_mma_sp(m, k, n):
    x, weight, mat = _problem(m, k, n, seed=m + k + n)
    func = cuda_mma_sp_matmul(m, k, n, out_dtype="float32", mma="emulated")
    out = run_on_cpu(func, *_args(x, mat, n, "float32"))
    np.testing.assert_allclose(out[0], _reference(x, weight), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "knobs",
    [
        MMASpKnobs(warps_n=1, warps_m=1, tiles_n=1, tiles_m=1, k_tile=32),
        MMASpKnobs(warps_n=2, warps_m=2, tiles_n=1, tiles_m=2, k_tile=96),  # K tail in a chunk
    ],
)
def test_data_movement_with_explicit_knobs_and_fp16_output(knobs):
    m, k, n = 21, 160, 48
    x, weight, mat = _problem(m, k, n, seed=7)
    func = cuda_mma_sp_matmul(m, k, n, knobs=knobs, mma="emulated")
    out = run_on_cpu(func, *_args(x, mat, n, "float16"))
    np.testing.assert_allclose(out[0], _reference(x, weight), rtol=2e-3, atol=2e-2)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="multiple of 32"):
        MMASpKnobs(k_tile=48)
    with pytest.raises(ValueError, match="shared"):
        cuda_mma_sp_matmul(4096, 4096, 64, knobs=MMASpKnobs(warps_m=8, tiles_m=4, k_tile=512))
    with pytest.raises(ValueError, match="out_dtype"):
        cuda_mma_sp_matmul(8, 32, 16, out_dtype="bfloat16")
    with pytest.raises(ValueError, match="mma must be"):
        cuda_mma_sp_matmul(8, 32, 16, mma="wmma")


def test_cuda_source_issues_mma_sp():
    func = cuda_mma_sp_matmul(100, 256, 96)
    assert str(func.attrs["tvm_sparse.kernel"]) == "mma_sp_matmul[2:4]"
    source = cuda_source(func)
    assert "mma.sp.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32" in source
    body = source[source.rindex("__global__") :]
    for needle in ("__shared__", "__syncthreads()", "uint4", "half2"):
        assert needle in body, f"{needle} missing from the kernel"


@pytest.mark.parametrize("m, out_dtype", [(1, "float16"), (128, "float32"), (37, "float16")])
def test_cuda_source_compiles_with_nvcc_sm87(m, out_dtype, tmp_path):
    if "sm_87" not in nvcc_arches():
        pytest.skip("no nvcc that targets sm_87 on PATH")
    func = cuda_mma_sp_matmul(m, 768, 768, out_dtype=out_dtype)
    (resources,) = nvcc(cuda_source(func), "sm_87", tmp_path).values()
    assert resources["spill_bytes"] == 0, resources
    assert 0 < resources["smem_bytes"] <= MAX_SHARED_BYTES


@pytest.mark.gpu
@pytest.mark.parametrize("m, k, n", [(37, 70, 100), (1, 768, 768), (256, 768, 3072)])
@pytest.mark.parametrize("out_dtype", ["float16", "float32"])
def test_runs_on_this_gpu(m, k, n, out_dtype):
    x, weight, mat = _problem(m, k, n)
    out = run_on_gpu(cuda_mma_sp_matmul(m, k, n, out_dtype=out_dtype), *_args(x, mat, n, out_dtype))
    tol = {"rtol": 2e-3, "atol": 3e-2} if out_dtype == "float16" else {"rtol": 1e-4, "atol": 1e-3}
    np.testing.assert_allclose(out[0], _reference(x, weight), **tol)
