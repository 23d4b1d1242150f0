"""The timing policy: interleaved rounds, a margin for the simpler choice, a decision that a
busy core does not change."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import tvm_sparse
from tvm_sparse.kernels._measure import block_mask
from tvm_sparse.timing import TimingPolicy, compare


def _work(ms: float):
    def call():
        end = time.perf_counter() + ms / 1e3
        while time.perf_counter() < end:
            pass

    return call


def test_a_clearly_faster_candidate_wins():
    result = compare({"dense": _work(1.0), "sparse": _work(0.4)}, reference="dense")
    assert result.winner == "sparse"
    assert result.speedup["sparse"] > 2 and result.speedup["dense"] == 1
    assert result.resolved and result.rounds >= TimingPolicy().min_rounds


def test_within_the_margin_the_reference_wins():
    result = compare(
        {"dense": _work(1.0), "sparse": _work(0.99)},
        reference="dense",
        policy=TimingPolicy(margin=0.1),
    )
    assert result.winner == "dense"


def test_a_slower_candidate_loses():
    assert compare({"a": _work(0.3), "b": _work(0.6)}, reference="a").winner == "a"


def test_unknown_reference():
    with pytest.raises(ValueError, match="reference 'c'"):
        compare({"a": _work(0.1)}, reference="c")


def test_busy_core_compile_makes_the_same_decisions():
    """The compile's per-layer choices and its speed check come out the same while another
    process keeps a core busy."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(768, 1024), torch.nn.ReLU()).eval()
    mask = block_mask(1024, 768, (16, 1), 0.1, np.random.default_rng(0))
    with torch.no_grad():
        model[0].weight.mul_(torch.from_numpy(mask.astype("float32")))
    x = torch.randn(64, 768)

    def decisions():
        compiled = tvm_sparse.compile(model, "x86", example_inputs=(x,), verify_speed=True)
        rows = [(r.name, r.kernel, r.pattern) for r in compiled.report.rows]
        checks = [n.split(":")[-1] for n in compiled.report.notes if n.startswith("speed check")]
        return rows, checks

    quiet = decisions()
    code = "import time\nend = time.monotonic() + 120\nwhile time.monotonic() < end: pass"
    busy = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.2)
        assert decisions() == quiet
    finally:
        busy.kill()
        busy.wait()
    assert any(kernel.startswith("bsr_") for _, kernel, _ in quiet[0])
