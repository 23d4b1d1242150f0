import pytest
import torch
import torch.nn.functional as F
from schedule_testing import assert_parallel_vectorized, parallel_blocks, run_and_compare
from tvm import s_tir

from tvm_sparse.schedules.cpu import Fallback, Pool, Reduction
from tvm_sparse.schedules.cpu.base import iter_stmts


class Pooling(torch.nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        if self.kind == "max":
            return F.max_pool2d(x, 3, 2, 1)
        if self.kind == "avg":
            return F.avg_pool2d(x, 2)
        if self.kind == "avg_pad":
            return F.avg_pool2d(x, 3, 1, 1)
        return F.adaptive_avg_pool2d(x, self.kind)


@pytest.mark.parametrize("kind", ["max", "avg", "avg_pad"])
@pytest.mark.parametrize("shape", [(1, 8, 32, 32), (2, 3, 17, 23)])
def test_pool_claimed_and_correct(kind, shape):
    claimed, mod = run_and_compare(Pooling(kind), [torch.randn(*shape)], [Pool(), Fallback()])
    (name,) = claimed
    assert claimed[name] == "Pool"
    assert_parallel_vectorized(mod[name])
    pads = [
        block.name_hint
        for block in iter_stmts(mod[name].body)
        if isinstance(block, s_tir.SBlock) and block.name_hint.startswith("pad_temp")
    ]
    # the padded rows each task reads are copied in the task, never the whole padded input
    pool_tasks = [task for task in parallel_blocks(mod[name]) if any("pool" in n for n in task)]
    assert all(any(pad in task for task in pool_tasks) for pad in pads), mod[name].script()
    assert bool(pads) == (kind != "avg")


@pytest.mark.parametrize("out", [1, 3])
def test_adaptive_avg_pool(out):
    claimed, mod = run_and_compare(
        Pooling(out), [torch.randn(1, 16, 12, 12)], [Pool(), Reduction(), Fallback()]
    )
    (name,) = claimed
    assert claimed[name] in {"Pool", "Reduction"}
    assert_parallel_vectorized(mod[name], vectorized=claimed[name] == "Pool")
