import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm
from schedule_testing import TARGET, assert_parallel_vectorized, run_and_compare
from tvm.script import tirx as T

from tvm_sparse.schedules.cpu import Fallback, Matmul, MatmulKnobs, default_rules


class LinearAct(torch.nn.Module):
    def __init__(self, k, n, act):
        super().__init__()
        self.lin = torch.nn.Linear(k, n)
        self.act = act

    def forward(self, x):
        y = self.lin(x)
        return {"relu": F.relu, "gelu": F.gelu, "none": lambda t: t}[self.act](y)


class BatchMatmul(torch.nn.Module):
    def forward(self, a, b):
        return a @ b


@pytest.mark.parametrize(
    "shape,k,n,act",
    [((20, 64), 64, 96, "relu"), ((7, 33), 33, 10, "gelu"), ((2, 5, 50), 50, 130, "none")],
)
def test_linear_epilogue_is_claimed_and_correct(shape, k, n, act):
    model = LinearAct(k, n, act)
    claimed, mod = run_and_compare(model, [torch.randn(*shape)], [Matmul(), Fallback()])
    names = [name for name in claimed if "matmul" in name]
    assert names and all(claimed[name] == "Matmul" for name in names)
    assert_parallel_vectorized(mod[names[0]])


@pytest.mark.parametrize(
    "a,b", [((2, 4, 10, 16), (2, 4, 16, 10)), ((3, 37, 16), (3, 16, 45)), ((1, 8, 8), (1, 8, 19))]
)
def test_batched_matmul(a, b):
    claimed, _ = run_and_compare(
        BatchMatmul(), [torch.randn(*a), torch.randn(*b)], [Matmul(), Fallback()]
    )
    assert claimed["matmul"] == "Matmul"


class ScaledScores(torch.nn.Module):
    """Attention scores as ViT computes them over its 197 tokens (here 37): ``Q @ K^T * s``."""

    def forward(self, q, k):
        return q @ k.transpose(-1, -2) * 0.125


def test_columns_without_a_vector_divisor_are_padded_not_predicated():
    # 37 columns have no divisor of whole vectors: a predicate on them inside the vectorised
    # loop made every tile scalar; padded, the compute has none and only the crop checks
    claimed, mod = run_and_compare(
        ScaledScores(), [torch.randn(3, 37, 16), torch.randn(3, 37, 16)], [Matmul(), Fallback()]
    )
    name = next(n for n in claimed if "matmul" in n)
    assert claimed[name] == "Matmul"
    script = mod[name].script()
    assert "_pad" in script
    update = script[script.index('T.sblock("matmul_update")') :].split("T.sblock(")[1]
    assert "T.where" not in update
    assert_parallel_vectorized(mod[name])


@T.prim_func(private=True, s_tir=True)
def matmul_transposed_b(
    a: T.Buffer((2, 24, 40), "float32"),
    b: T.Buffer((2, 36, 40), "float32"),
    c: T.Buffer((2, 24, 36), "float32"),
):
    for s, i, j, k in T.grid(2, 24, 36, 40):
        with T.sblock("matmul"):
            vs, vi, vj, vk = T.axis.remap("SSSR", [s, i, j, k])
            with T.init():
                c[vs, vi, vj] = T.float32(0)
            c[vs, vi, vj] = c[vs, vi, vj] + a[vs, vi, vk] * b[vs, vj, vk]


def test_transposed_b():
    sch = Matmul(MatmulKnobs(tile_rows=4, tile_vectors=1)).apply(matmul_transposed_b, TARGET, False)
    assert sch is not None
    func = sch.mod["main"]
    assert_parallel_vectorized(func)
    lib = tvm.compile(func.with_attr("global_symbol", "main"), TARGET)
    a = np.random.randn(2, 24, 40).astype("float32")
    b = np.random.randn(2, 36, 40).astype("float32")
    c = tvm.runtime.tensor(np.zeros((2, 24, 36), "float32"))
    lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), c)
    np.testing.assert_allclose(c.numpy(), a @ b.transpose(0, 2, 1), rtol=1e-4, atol=1e-4)


def test_not_a_matmul_is_declined():
    @T.prim_func(private=True, s_tir=True)
    def row_sum(a: T.Buffer((8, 32), "float32"), c: T.Buffer((8,), "float32")):
        for i, k in T.grid(8, 32):
            with T.sblock("sum"):
                vi, vk = T.axis.remap("SR", [i, k])
                with T.init():
                    c[vi] = T.float32(0)
                c[vi] = c[vi] + a[vi, vk]

    assert Matmul().apply(row_sum, TARGET, False) is None


def test_dynamic_batch_is_scheduled():
    @T.prim_func(private=True, s_tir=True)
    def dyn(var_a: T.handle, b: T.Buffer((T.int64(64), T.int64(48)), "float32"), var_c: T.handle):
        m = T.int64()
        a = T.match_buffer(var_a, (m, T.int64(64)), "float32")
        c = T.match_buffer(var_c, (m, T.int64(48)), "float32")
        for i, j, k in T.grid(m, T.int64(48), T.int64(64)):
            with T.sblock("matmul"):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                with T.init():
                    c[vi, vj] = T.float32(0)
                c[vi, vj] = c[vi, vj] + a[vi, vk] * b[vk, vj]

    rules = default_rules(TARGET)
    claimed = next(rule for rule in rules if rule.apply(dyn, TARGET, False) is not None)
    assert type(claimed).__name__ == "Matmul"
    sch = claimed.apply(dyn, TARGET, False)
    func = sch.mod["main"]
    assert_parallel_vectorized(func)
    lib = tvm.compile(func.with_attr("global_symbol", "main"), TARGET)
    a = np.random.randn(13, 64).astype("float32")
    b = np.random.randn(64, 48).astype("float32")
    c = tvm.runtime.tensor(np.zeros((13, 48), "float32"))
    lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), c)
    np.testing.assert_allclose(c.numpy(), a @ b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pack_b", [True, False])
def test_weight_panels(pack_b):
    from tvm import s_tir

    from tvm_sparse.schedules.cpu.base import LAYOUT_REWRITE_ATTR, iter_stmts

    knobs = MatmulKnobs.for_target(TARGET)
    knobs.pack_b = pack_b
    model = LinearAct(48, 4 * knobs.vector_lanes * knobs.tile_vectors, "relu")
    claimed, mod = run_and_compare(model, [torch.randn(9, 48)], [Matmul(knobs), Fallback()])
    name = next(n for n in claimed if "matmul" in n)
    packed = any(
        isinstance(node, s_tir.SBlock) and LAYOUT_REWRITE_ATTR in node.annotations
        for node in iter_stmts(mod[name].body)
    )
    assert packed == pack_b


@pytest.mark.parametrize("row_tasks", [-1, 0, 1])
@pytest.mark.parametrize("m,k,n", [(196, 96, 64), (24, 96, 192)])
def test_task_order_is_correct_both_ways(m, k, n, row_tasks):
    knobs = MatmulKnobs.for_target(TARGET)
    knobs.row_tasks = row_tasks
    claimed, _ = run_and_compare(LinearAct(k, n, "relu"), [torch.randn(m, k)], [Matmul(knobs),
                                 Fallback()])  # fmt: skip
    assert "Matmul" in claimed.values()


def test_task_order_follows_the_larger_operand():
    from tvm_sparse.schedules.cpu.matmul import _row_tasks

    knobs = MatmulKnobs.for_target(TARGET)
    assert _row_tasks(knobs, 196, 96)  # A (196 x K) outweighs B (K x 96): rows outside
    assert not _row_tasks(knobs, 128, 3072)  # BERT's FFN: column panels outside
    knobs.row_tasks = 0
    assert not _row_tasks(knobs, 196, 96)


def test_row_tile_takes_a_large_divisor_or_a_predicated_tail():
    from tvm_sparse.schedules.cpu.matmul import _row_tile

    assert _row_tile(196, 8) == 7  # 28 whole tiles of 7
    assert _row_tile(6, 4) == 3
    assert _row_tile(49, 4) == 4  # no divisor over 2: 13 tiles, the last one predicated
    assert _row_tile(98, 4) == 4  # a tile of 2 would halve the rows per broadcast
    assert _row_tile(3, 4) == 3
    assert _row_tile(None, 4) == 4  # a symbolic extent: predicated


@pytest.mark.parametrize(
    "k,knob",
    [(16, {}), (160, {"row_tasks": 1}), (160, {"row_tasks": 0}), (160, {"k_block": 32})],
)
def test_row_tail_is_correct_on_every_task_order(k, knob):
    # 49 rows (a 7x7 feature map) in tiles of 4: B in L1, rows or panels outside, k blocks
    knobs = MatmulKnobs.for_target(TARGET)
    for name, value in {"tile_rows": 4, **knob}.items():
        setattr(knobs, name, value)
    claimed, mod = run_and_compare(LinearAct(k, 96, "relu"), [torch.randn(49, k)], [Matmul(knobs),
                                   Fallback()])  # fmt: skip
    name = next(n for n in claimed if "matmul" in n)
    assert claimed[name] == "Matmul"
    script = mod[name].script()
    # the 13th tile: predicated, or computed on rows padded to 52 and cropped
    assert "T.where" in script or "_pad" in script
