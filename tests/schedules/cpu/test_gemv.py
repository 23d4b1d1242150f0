import numpy as np
import pytest
import torch
import tvm
from schedule_testing import TARGET, assert_parallel_vectorized, run_and_compare
from tvm.script import tirx as T

from tvm_sparse.schedules.cpu import GEMV, Fallback, Matmul


@T.prim_func(private=True, s_tir=True)
def gemv_bias_relu(
    x: T.Buffer((1, 96), "float32"),
    w: T.Buffer((70, 96), "float32"),
    bias: T.Buffer((70,), "float32"),
    y: T.Buffer((1, 70), "float32"),
):
    t = T.sblock_alloc_buffer((1, 70))
    for i, j, k in T.grid(1, 70, 96):
        with T.sblock("matmul"):
            vi, vj, vk = T.axis.remap("SSR", [i, j, k])
            with T.init():
                t[vi, vj] = T.float32(0)
            t[vi, vj] = t[vi, vj] + x[vi, vk] * w[vj, vk]
    for i, j in T.grid(1, 70):
        with T.sblock("epilogue"):
            vi, vj = T.axis.remap("SS", [i, j])
            y[vi, vj] = T.max(t[vi, vj] + bias[vj], T.float32(0))


def test_gemv_contiguous_reduction():
    sch = GEMV().apply(gemv_bias_relu, TARGET, False)
    assert sch is not None
    func = sch.mod["main"]
    assert_parallel_vectorized(func)
    lib = tvm.compile(func.with_attr("global_symbol", "main"), TARGET)
    x = np.random.randn(1, 96).astype("float32")
    w = np.random.randn(70, 96).astype("float32")
    b = np.random.randn(70).astype("float32")
    y = tvm.runtime.tensor(np.zeros((1, 70), "float32"))
    lib["main"](*(tvm.runtime.tensor(a) for a in (x, w, b)), y)
    np.testing.assert_allclose(y.numpy(), np.maximum(x @ w.T + b, 0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k,n", [(64, 96), (33, 10)])
def test_batch_one_linear(k, n):
    # torch's linear arrives with its weight pre-transposed ([K, N]): Matmul's vector-over-N case.
    model = torch.nn.Linear(k, n)
    claimed, mod = run_and_compare(model, [torch.randn(1, k)], [GEMV(), Matmul(), Fallback()])
    (name,) = [n for n in claimed if "matmul" in n]
    assert claimed[name] in {"GEMV", "Matmul"}
    assert_parallel_vectorized(mod[name])
