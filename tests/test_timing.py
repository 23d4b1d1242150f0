"""The timing policy: interleaved rounds, a margin for the simpler choice, a decision that a
busy core does not change."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import tvm_sparse
from tvm_sparse.measure import block_mask
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


def test_between_candidates_within_the_margin_the_first_named_wins():
    # both clearly beat the reference; they time alike, so the caller's preference decides
    calls = {"dense": _work(1.0), "first": _work(0.41), "second": _work(0.4)}
    assert compare(calls, reference="dense").winner == "first"
    calls = {"dense": _work(1.0), "first": _work(0.6), "second": _work(0.3)}
    assert compare(calls, reference="dense").winner == "second"


def test_two_candidates_compare_round_by_round():
    result = compare({"dense": _work(1.0), "a": _work(0.5), "b": _work(0.25)}, reference="dense")
    assert all(len(v) == result.rounds for v in result.round_ms.values())
    assert result.ratio("a", "b") == pytest.approx(2.0, rel=0.2)
    assert result.ratio("b", "a") == pytest.approx(0.5, rel=0.2)
    assert result.ratio("a", "a") == 1.0


def test_busy_core_compile_makes_the_same_decisions(tmp_path, monkeypatch):
    """The compile's per-layer choices (each layer's candidates timed on this machine) and its
    speed check come out the same while another process keeps a core busy."""
    from tvm_sparse.measure import calibrate_host

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    grid = {"ms": (64,), "blocks": ((16, 1), (1, 4)), "densities": (0.2, 0.5), "nm": ()}
    monkeypatch.setattr(calibrate_host, "QUICK_GRID", grid)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(768, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 768)
    ).eval()
    rng = np.random.default_rng(0)
    with torch.no_grad():  # one layer sparse kernels win by far, one they lose by far
        model[0].weight.mul_(torch.from_numpy(block_mask(1024, 768, (16, 1), 0.1, rng) * 1.0))
        model[2].weight.mul_(torch.from_numpy(block_mask(768, 1024, (1, 4), 0.5, rng) * 1.0))
    x = torch.randn(64, 768)

    def decisions():
        shutil.rmtree(tmp_path / "tvm_sparse" / "layers", ignore_errors=True)  # time them anew
        compiled = tvm_sparse.compile(
            model, "x86", example_inputs=(x,), verify_speed=True, measure_layers=True
        )
        assert sum("measured on this machine" in r.reason for r in compiled.report.rows) == 2
        rows = [(r.name, r.kernel, r.pattern) for r in compiled.report.rows]
        checks = [n.split(":")[-1] for n in compiled.report.notes if n.startswith("speed check")]
        return rows, checks

    quiet = decisions()  # the first also measures the calibration table both use
    code = "import time\nend = time.monotonic() + 120\nwhile time.monotonic() < end: pass"
    busy = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.2)
        assert decisions() == quiet
    finally:
        busy.kill()
        busy.wait()
    kernels = [kernel for _, kernel, pattern in quiet[0] if pattern != "dense"]
    assert kernels[0].startswith("bsr_matmul[16x1]") and len(kernels) == 1, quiet
