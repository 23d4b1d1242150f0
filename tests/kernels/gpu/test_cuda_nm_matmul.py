"""The CUDA N:M kernel (compressed values, int8 group offsets): index logic on the CPU, CUDA
build structure, nvcc (sm_87) and ptxas (sm_72) builds, and a run on a GPU where there is one."""

import numpy as np
import pytest
from cuda_testing import (
    build,
    cuda_source,
    device_ptx,
    nvcc,
    nvcc_arches,
    nvptx_build,
    nvptx_target,
    ptxas,
    run_on_cpu,
    run_on_gpu,
    skip_reason_sm72,
)

from tvm_sparse.kernels import to_nm
from tvm_sparse.kernels.gpu import CUDATileKnobs, cuda_nm_matmul, nm_group_offsets
from tvm_sparse.kernels.gpu.tiling import MAX_SHARED_BYTES
from tvm_sparse.measure import nm_mask

NM = [(2, 4), (4, 8)]
TOL = {"atol": 1e-4, "rtol": 1e-4}


def _problem(nm, m, k, n, seed=0):
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((n, k)) * nm_mask(n, k, nm, rng)).astype("float32")
    x = rng.standard_normal((m, k)).astype("float32")
    return weight, x, to_nm(weight, nm)


def _args(x, mat, n):
    m = x.shape[0]
    return x[None], mat.values, nm_group_offsets(mat), np.zeros((1, m, n), "float32")


def test_group_offsets():
    weight = np.zeros((2, 10), "float32")
    weight[0, [1, 3, 4, 9]] = 1.0
    weight[1, [0, 6]] = 2.0
    mat = to_nm(weight, (2, 4))
    offsets = nm_group_offsets(mat)
    assert offsets.dtype == np.int8
    groups = np.arange(mat.columns.shape[1]) // 2 * 4
    np.testing.assert_array_equal(groups + offsets, mat.columns)
    shuffled = type(mat)(mat.values, mat.columns[:, ::-1].copy(), mat.shape, mat.nm)
    with pytest.raises(ValueError, match="group by group"):
        nm_group_offsets(shuffled)


@pytest.mark.parametrize("nm", NM)
@pytest.mark.parametrize("m, k, n", [(37, 70, 100), (1, 64, 48), (128, 96, 64), (5, 200, 9)])
def test_index_logic_matches_numpy(nm, m, k, n):
    weight, x, mat = _problem(nm, m, k, n)
    out = run_on_cpu(cuda_nm_matmul(m, k, n, nm, mat.values.shape[0]), *_args(x, mat, n))
    np.testing.assert_allclose(out[0], x @ weight.T, **TOL)


@pytest.mark.parametrize(
    "knobs",
    [CUDATileKnobs(k_tile=24), CUDATileKnobs(threads=64, threads_m=4, rows_per_thread=3)],
)
def test_index_logic_with_explicit_knobs(knobs):
    m, k, n, nm = 21, 100, 50, (2, 4)
    weight, x, mat = _problem(nm, m, k, n, seed=4)
    func = cuda_nm_matmul(m, k, n, nm, mat.values.shape[0], knobs=knobs)
    np.testing.assert_allclose(run_on_cpu(func, *_args(x, mat, n))[0], x @ weight.T, **TOL)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="rows >= n"):
        cuda_nm_matmul(4, 16, 8, (2, 4), 4)
    with pytest.raises(ValueError, match="0 < N <= M"):
        cuda_nm_matmul(4, 16, 8, (5, 4), 8)


@pytest.mark.parametrize("nm", NM)
def test_cuda_build_binds_threads_and_stages_x_in_shared_memory(nm):
    m, k, n = 300, 256, 512
    _, _, mat = _problem(nm, m, k, n)
    func = cuda_nm_matmul(m, k, n, nm, mat.values.shape[0])
    assert func.attrs["tirx.is_scheduled"]
    assert str(func.attrs["tvm_sparse.kernel"]) == f"nm_matmul[{nm[0]}:{nm[1]}]"
    source = cuda_source(func)
    body = source[source.rindex("__global__") :]
    for needle in ("blockIdx.x", "blockIdx.y", "threadIdx.x", "__shared__", "__syncthreads()"):
        assert needle in body, f"{needle} missing from the {nm} kernel"
    assert "signed char" in body or "int8_t" in body  # offsets are read as bytes


@pytest.mark.parametrize("nm", NM)
@pytest.mark.parametrize("m", [1, 128])
def test_cuda_source_compiles_with_nvcc_sm87(nm, m, tmp_path):
    if "sm_87" not in nvcc_arches():
        pytest.skip("no nvcc that targets sm_87 on PATH")
    _, _, mat = _problem(nm, m, 768, 768)
    func = cuda_nm_matmul(m, 768, 768, nm, mat.values.shape[0])
    (resources,) = nvcc(cuda_source(func), "sm_87", tmp_path).values()
    assert resources["spill_bytes"] == 0, resources
    assert 0 < resources["smem_bytes"] <= MAX_SHARED_BYTES


@pytest.mark.parametrize("nm", NM)
def test_nvptx_build_assembles_for_sm72(nm, tmp_path):
    if reason := skip_reason_sm72():
        pytest.skip(reason)
    _, _, mat = _problem(nm, 128, 768, 768)
    with nvptx_build():
        lib = build(cuda_nm_matmul(128, 768, 768, nm, 768), nvptx_target("sm_72"))
    (resources,) = ptxas(device_ptx(lib.mod), "sm_72", tmp_path).values()
    assert resources["spill_bytes"] == 0, resources


@pytest.mark.gpu
@pytest.mark.parametrize("nm", NM)
@pytest.mark.parametrize("m, k, n", [(37, 70, 100), (1, 768, 768), (256, 768, 3072)])
def test_runs_on_this_gpu(nm, m, k, n):
    weight, x, mat = _problem(nm, m, k, n)
    out = run_on_gpu(cuda_nm_matmul(m, k, n, nm, mat.values.shape[0]), *_args(x, mat, n))
    np.testing.assert_allclose(out[0], x @ weight.T, atol=1e-3, rtol=1e-4)
