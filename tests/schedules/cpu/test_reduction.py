import pytest
import torch
from schedule_testing import assert_parallel_vectorized, run_and_compare

from tvm_sparse.schedules.cpu import Fallback, Reduction


class Op(torch.nn.Module):
    def __init__(self, kind, dim):
        super().__init__()
        self.kind = kind
        self.ln = torch.nn.LayerNorm(dim)

    def forward(self, x):
        if self.kind == "softmax":
            return torch.softmax(x, -1)
        if self.kind == "layer_norm":
            return self.ln(x)
        if self.kind == "mean":
            return x.mean(-1, keepdim=True) + torch.tanh(x)
        return x.sum(-1)


@pytest.mark.parametrize("kind", ["softmax", "layer_norm", "mean", "sum"])
@pytest.mark.parametrize("shape", [(2, 7, 33), (1, 64)])
def test_reduction_claimed_and_correct(kind, shape):
    claimed, mod = run_and_compare(
        Op(kind, shape[-1]), [torch.randn(*shape)], [Reduction(), Fallback()]
    )
    reductions = {n: r for n, r in claimed.items() if "reshape" not in n}
    assert reductions and set(reductions.values()) == {"Reduction"}
    for name in reductions:
        assert_parallel_vectorized(mod[name], vectorized=False)


def _blocks(func):
    from tvm import s_tir

    from tvm_sparse.schedules.cpu.base import iter_stmts

    return [n for n in iter_stmts(func.body) if isinstance(n, s_tir.SBlock)]


@pytest.mark.parametrize("kind", ["softmax", "layer_norm", "mean"])
def test_reductions_over_whole_registers_accumulate_per_lane(kind):
    # rows of 256: every reduction is split into one partial result per SIMD lane, updated
    # by vector instructions, and summed across the lanes at the end
    from tvm import tirx

    from tvm_sparse.schedules.cpu.base import iter_stmts

    claimed, mod = run_and_compare(Op(kind, 256), [torch.randn(3, 5, 256)], [Reduction()])
    (name,) = [n for n in claimed if "reshape" not in n]
    func = mod[name]
    partials = [b for b in _blocks(func) if b.name_hint.endswith("_rf_update")]
    assert partials, func.script()
    vector_bodies = [
        loop.body
        for loop in iter_stmts(func.body)
        if isinstance(loop, tirx.For) and loop.kind == tirx.ForKind.VECTORIZED
    ]
    # each partial update sits directly in a vectorised loop
    for partial in partials:
        assert any(
            any(b.same_as(partial) for b in iter_stmts(body) if hasattr(b, "name_hint"))
            for body in vector_bodies
        ), func.script()


def test_narrow_rows_keep_serial_reductions():
    # 33 columns are no whole registers: the reduction stays serial (and correct)
    claimed, mod = run_and_compare(Op("softmax", 33), [torch.randn(4, 33)], [Reduction()])
    (name,) = [n for n in claimed if "reshape" not in n]
    assert not [b for b in _blocks(mod[name]) if "_rf" in b.name_hint]
