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
