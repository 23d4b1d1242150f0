"""InjectPrefetch: the loops a rule marks prefetch the next chunk of their buffer, results equal."""

import numpy as np
import pytest
import torch
import tvm
from schedule_testing import TARGET, to_fused_relax
from tvm import relax, tirx

from tvm_sparse.passes import InjectPrefetch, PackWeights
from tvm_sparse.passes.inject_prefetch import PREFETCH_ATTR
from tvm_sparse.schedules import ApplySchedules, schedule_rules
from tvm_sparse.schedules.cpu.base import iter_stmts


class TwoConvs(torch.nn.Module):
    """Two 3x3 convs of 128 channels (packed weights: two panels of 64 output channels)."""

    def __init__(self, channels: int = 128):
        super().__init__()
        self.a = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.b = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _scheduled(model, x):
    mod = to_fused_relax(model, x, nhwc=True)
    with TARGET:
        return tvm.transform.Sequential([ApplySchedules(schedule_rules(TARGET)), PackWeights()])(
            mod
        )


def _prefetches(func: tirx.PrimFunc) -> int:
    # the prefetch sits in an Evaluate; count the calls in the statement text
    return func.script().count("T.prefetch(")


def _run(mod, x):
    vm = relax.VirtualMachine(tvm.compile(mod, TARGET), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x.numpy()))
    while not hasattr(out, "numpy"):
        out = out[0]
    return out.numpy()


def test_marked_loops_prefetch_and_results_are_unchanged():
    torch.manual_seed(0)
    model, x = TwoConvs().eval(), torch.randn(1, 128, 7, 7)  # 7x7: chunks of 49 pixels
    before = _scheduled(model, x)
    marked = [
        gv.name_hint
        for gv, f in before.functions_items()
        if isinstance(f, tirx.PrimFunc)
        and any(
            isinstance(s, tirx.For) and PREFETCH_ATTR in s.annotations for s in iter_stmts(f.body)
        )
    ]
    assert len(marked) == 2, marked  # both convs: chunks of 49 pixels
    after = InjectPrefetch()(before)
    for name in marked:
        assert _prefetches(after[name]) == 1 and _prefetches(before[name]) == 0
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(_run(after, x), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_run(after, x), _run(before, x), rtol=0, atol=0)


@pytest.mark.parametrize("hw", [14, 28])
def test_wide_chunks_are_not_marked(hw):
    # 14 x 14 and wider: a chunk holds more than 64 pixels, each weight feeds enough FMAs
    before = _scheduled(TwoConvs().eval(), torch.randn(1, 128, hw, hw))
    after = InjectPrefetch()(before)
    assert after.same_as(before) or all(
        _prefetches(f) == 0 for _, f in after.functions_items() if isinstance(f, tirx.PrimFunc)
    )
