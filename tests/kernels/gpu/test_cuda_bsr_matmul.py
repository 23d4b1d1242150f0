"""The CUDA BSR kernel: index logic on the CPU, CUDA build structure, nvcc (sm_87) and ptxas
(sm_72) builds, and a run on a GPU where there is one."""

import re

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

from tvm_sparse.kernels import to_bsr
from tvm_sparse.kernels.gpu import CUDATileKnobs, cuda_bsr_matmul
from tvm_sparse.kernels.gpu.tiling import MAX_SHARED_BYTES
from tvm_sparse.measure import block_mask

#: Every block shape the CPU path uses.
BLOCKS = [(16, 1), (8, 1), (32, 1), (4, 4), (16, 16), (1, 1), (1, 4), (4, 1)]
TOL = {"atol": 1e-4, "rtol": 1e-4}


def _problem(block, m, k, n, density=0.3, seed=0):
    rng = np.random.default_rng(seed)
    mask = block_mask(n, k, block, density, rng)
    mask[: block[0], : block[1]] = True  # at least one block
    weight = (rng.standard_normal((n, k)) * mask).astype("float32")
    x = rng.standard_normal((m, k)).astype("float32")
    return weight, x, to_bsr(weight, block)


def _kernel(bsr, m, k, n, **kwargs):
    return cuda_bsr_matmul(m, k, n, bsr.block, bsr.nnzb, bsr.block_rows, **kwargs)


# --- index logic, run on the CPU ------------------------------------------------------------


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("m, k, n", [(37, 70, 100), (1, 64, 48), (128, 96, 64)])
def test_index_logic_matches_numpy(block, m, k, n):
    weight, x, bsr = _problem(block, m, k, n)
    func = _kernel(bsr, m, k, n)
    out = run_on_cpu(
        func, x[None], bsr.data, bsr.indices, bsr.indptr, np.zeros((1, m, n), "float32")
    )
    np.testing.assert_allclose(out[0], x @ weight.T, **TOL)


@pytest.mark.parametrize(
    "knobs",
    [
        CUDATileKnobs(k_tile=16),  # many K steps: the cursor carries over step boundaries
        CUDATileKnobs(threads=64, threads_m=8, m_per_thread=3),  # odd register tile, M tail
        CUDATileKnobs(threads=32, threads_m=32, m_per_thread=1, k_tile=8),
    ],
)
def test_index_logic_with_explicit_knobs(knobs):
    m, k, n = 50, 90, 72
    weight, x, bsr = _problem((8, 1), m, k, n, density=0.4, seed=3)
    out = run_on_cpu(
        _kernel(bsr, m, k, n, knobs=knobs),
        x[None],
        bsr.data,
        bsr.indices,
        bsr.indptr,
        np.zeros((1, m, n), "float32"),
    )
    np.testing.assert_allclose(out[0], x @ weight.T, **TOL)


@pytest.mark.parametrize("x_layout, y_layout", [("KM", "NM"), ("KM", "MN"), ("MK", "NM")])
def test_batched_layouts(x_layout, y_layout):
    b, m, k, n, block = 3, 20, 30, 40, (4, 4)
    weight, _, bsr = _problem(block, m, k, n, density=0.4, seed=1)
    x = np.random.default_rng(2).standard_normal((b, m, k)).astype("float32")
    func = _kernel(bsr, m, k, n, batch=b, x_layout=x_layout, y_layout=y_layout)
    x_in = x if x_layout == "MK" else x.transpose(0, 2, 1).copy()
    y_shape = (b, m, n) if y_layout == "MN" else (b, n, m)
    out = run_on_cpu(func, x_in, bsr.data, bsr.indices, bsr.indptr, np.zeros(y_shape, "float32"))
    got = out if y_layout == "MN" else out.transpose(0, 2, 1)
    np.testing.assert_allclose(got, np.einsum("bmk,nk->bmn", x, weight), **TOL)


def test_bad_arguments_raise():
    _, _, bsr = _problem((16, 1), 8, 32, 32)
    with pytest.raises(ValueError, match="x_layout"):
        _kernel(bsr, 8, 32, 32, x_layout="NK")
    with pytest.raises(ValueError, match="cannot hold n=64"):
        _kernel(bsr, 8, 32, 64)
    with pytest.raises(ValueError, match="shared memory"):
        _kernel(bsr, 512, 4096, 32, knobs=CUDATileKnobs(threads_m=32, m_per_thread=8, k_tile=64))
    with pytest.raises(ValueError, match="threads"):
        CUDATileKnobs(threads=2048)


def test_tiling_follows_the_shape():
    one_row = CUDATileKnobs().resolve(1, 768, 48, 16, 1)
    assert (one_row.threads_m, one_row.m_per_thread) == (1, 1)  # warps span block rows
    assert one_row.threads_n == 64  # no idle threads past the 48 block rows
    many = CUDATileKnobs().resolve(512, 768, 48, 16, 1)
    assert many.threads_m == 32 and many.m_per_thread * 16 == 32  # a warp shares a block row
    assert many.shared_bytes() <= 16 * 1024 + 4 * many.m_tile
    wide = CUDATileKnobs().resolve(64, 100, 8, 4, 16)
    assert wide.k_tile % 16 == 0 and wide.k_tile <= 112


# --- CUDA build ------------------------------------------------------------------------------


@pytest.mark.parametrize("block", BLOCKS)
def test_cuda_build_binds_threads_and_stages_x_in_shared_memory(block):
    m, k, n = 300, 256, 512  # several tiles of M and of N
    _, _, bsr = _problem(block, m, k, n, density=0.2)
    func = _kernel(bsr, m, k, n)
    assert func.attrs["tirx.is_scheduled"]
    assert str(func.attrs["tvm_sparse.kernel"]) == f"bsr_matmul[{block[0]}x{block[1]}]"
    source = cuda_source(func)
    assert len(set(re.findall(r"__global__ void [^(]*?(\w+)\(", source))) == 1
    body = source[source.rindex("__global__") :]  # the definition
    for needle in ("blockIdx.x", "blockIdx.y", "threadIdx.x", "__shared__", "__syncthreads()"):
        assert needle in body, f"{needle} missing from the {block} kernel"
    assert "while" in body  # the cursor over a block row's nonzero blocks


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("m", [1, 128])
def test_cuda_source_compiles_with_nvcc_sm87(block, m, tmp_path):
    if "sm_87" not in nvcc_arches():
        pytest.skip("no nvcc that targets sm_87 on PATH")
    _, _, bsr = _problem(block, m, 768, 768, density=0.1)
    func = _kernel(bsr, m, 768, 768)
    (resources,) = nvcc(cuda_source(func), "sm_87", tmp_path).values()
    assert resources["spill_bytes"] == 0, resources
    assert 0 < resources["smem_bytes"] <= MAX_SHARED_BYTES
    assert resources["registers"] <= 255


@pytest.mark.parametrize("block", [(16, 1), (16, 16), (1, 1)])
def test_nvptx_build_assembles_for_sm72(block, tmp_path):
    if reason := skip_reason_sm72():
        pytest.skip(reason)
    _, _, bsr = _problem(block, 128, 768, 768, density=0.1)
    with nvptx_build():
        lib = build(_kernel(bsr, 128, 768, 768), nvptx_target("sm_72"))
    (resources,) = ptxas(device_ptx(lib.mod), "sm_72", tmp_path).values()
    assert resources["spill_bytes"] == 0, resources
    assert 0 < resources["smem_bytes"] <= MAX_SHARED_BYTES


# --- on a GPU --------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("m, k, n", [(37, 70, 100), (1, 768, 768), (256, 768, 3072)])
def test_runs_on_this_gpu(block, m, k, n):
    weight, x, bsr = _problem(block, m, k, n, density=0.1)
    out = run_on_gpu(
        _kernel(bsr, m, k, n),
        x[None],
        bsr.data,
        bsr.indices,
        bsr.indptr,
        np.zeros((1, m, n), "float32"),
    )
    np.testing.assert_allclose(out[0], x @ weight.T, atol=1e-3, rtol=1e-4)
