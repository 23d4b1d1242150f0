import pytest
import torch
import torch.nn.functional as F
from schedule_testing import LANES, assert_parallel_vectorized, run_and_compare
from tvm import tirx

from tvm_sparse.schedules.cpu import Fallback, Injective
from tvm_sparse.schedules.cpu.base import iter_stmts


class Elementwise(torch.nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def forward(self, x, y):
        if self.kind == "gelu":
            return F.gelu(x) + y
        if self.kind == "tanh":
            return torch.tanh(x) * y
        if self.kind == "transpose":
            return (x + y).transpose(-1, -2).reshape(x.shape[0], -1)
        return torch.cat([x, y * 2], dim=-1)


@pytest.mark.parametrize("kind", ["gelu", "tanh", "transpose", "concat"])
@pytest.mark.parametrize("shape", [(4, 48, 64), (1, 7, 13)])
def test_injective_claimed_and_correct(kind, shape):
    claimed, mod = run_and_compare(
        Elementwise(kind), [torch.randn(*shape), torch.randn(*shape)], [Injective(), Fallback()]
    )
    assert set(claimed.values()) == {"Injective"}
    for name in claimed:
        assert_parallel_vectorized(mod[name], vectorized=shape[-1] % 2 == 0)


class PadChannelsLast(torch.nn.Module):
    def forward(self, x):
        return F.pad(x, (0, 0, 2, 2, 1, 1)) * 2.0  # pad H and W of an NHWC image


def test_short_channel_axis_vectorised_as_rows():
    # 3 channels: the last two loops fuse into a row of 23 x 3 values whose flattened index
    # stays affine, not vectors across rows whose lanes divide their index back
    claimed, mod = run_and_compare(
        PadChannelsLast(), [torch.randn(2, 17, 19, 3)], [Injective(), Fallback()]
    )
    (name,) = claimed
    lanes = {
        int(loop.extent)
        for loop in iter_stmts(mod[name].body)
        if isinstance(loop, tirx.For) and loop.kind == tirx.ForKind.VECTORIZED
    }
    assert lanes == {23 * 3}, mod[name].script()
    assert_parallel_vectorized(mod[name])


class ToChannelsLast(torch.nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1) * 2.0  # NCHW -> NHWC of a 3-channel image


def test_short_channel_transpose_vectorises_the_input_rows():
    # vectors run along the rows of each input plane (stored with a stride of 3), the three
    # channels unrolled inside the parallel image rows, not one task per vector
    claimed, mod = run_and_compare(
        ToChannelsLast(), [torch.randn(1, 3, 20, 32)], [Injective(), Fallback()]
    )
    (name,) = claimed
    loops = [s for s in iter_stmts(mod[name].body) if isinstance(s, tirx.For)]
    kinds = {loop.kind: int(loop.extent) for loop in loops}
    assert kinds[tirx.ForKind.PARALLEL] == 20, mod[name].script()
    assert kinds[tirx.ForKind.UNROLLED] == 3 and kinds[tirx.ForKind.VECTORIZED] == LANES
