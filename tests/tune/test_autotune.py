"""End-to-end tuning on this machine: MetaSchedule builder and runner, a tiny model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import tvm
from torch import nn

import tvm_sparse
from tvm_sparse.targets import resolve_target
from tvm_sparse.tune import TuningCache, TuningCacheError, autotune
from tvm_sparse.tune.apply_tuning_records import _replay
from tvm_sparse.tune.cache import Record
from tvm_sparse.tune.space import dense_workload_key, rule_space, tunable_rule
from tvm_sparse.tune.workloads import schedule_input

pytestmark = [pytest.mark.tuning, pytest.mark.slow]


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def test_autotune_then_compile_is_never_slower(model, cache):
    net, x = model
    result = autotune(net, "x86", example_inputs=(x,), trials=3, cache=cache, progress=False)
    kinds = {w.kind for w in result.workloads}
    assert kinds == {"sparse", "dense"}
    assert result.trials == sum(w.total for w in result.workloads) and result.seconds > 0
    for w in result.workloads:
        assert w.measured >= 3 and np.isfinite(w.default_s)  # + re-measures of a winner
        assert w.speedup >= 1.0
    assert "speedup" in result.table()
    compiled = tvm_sparse.compile(net, "x86", example_inputs=(x,), tuning_cache=cache.path)
    tuned = {r.kernel for r in compiled.report.rows if r.kernel.endswith("(tuned)")}
    assert len(tuned) == sum(w.tuned for w in result.workloads)
    np.testing.assert_allclose(
        compiled(x).detach().numpy(), net(x).detach().numpy(), rtol=1e-4, atol=1e-4
    )
    # A second run finds every workload done and measures nothing.
    again = autotune(net, "x86", example_inputs=(x,), trials=3, cache=cache, progress=False)
    assert again.trials == 0


class ConvLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 6 * 6, 32)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _searched(cache: TuningCache) -> list[Record]:
    return [r for recs in cache.records().values() for r in recs if r.source == "metaschedule"]


class TwoConvs(nn.Module):
    """Two convs: the model runs NHWC (ConvertToNHWC), the 1x1 one as a matmul."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 32, 3, padding=1)
        self.pointwise = nn.Conv2d(32, 16, 1)

    def forward(self, x):
        return self.pointwise(torch.relu(self.conv(x)))


@pytest.mark.parametrize(
    "net_type,conv_space", [(ConvLinear, "Conv2d"), (TwoConvs, "Conv2dNHWC")]
)  # a lone conv stays NCHW
def test_dense_ops_are_tuned_in_the_knobs_of_their_rules(cache, net_type, conv_space):
    torch.manual_seed(0)
    net, x = net_type().eval(), torch.randn(2, 8, 6, 6)
    options = dict(example_inputs=(x,), cache=cache, kinds=("dense",), progress=False)
    result = autotune(net, "x86", trials=4, **options)
    assert sorted(w.space for w in result.workloads) == [conv_space, "Matmul"]
    searched = _searched(cache)
    assert {r.workload for r in searched} == {w.key for w in result.workloads}
    assert len(searched) <= 6  # 3 trials per workload besides the default
    assert all(r.extra["space"] in (conv_space, "Matmul") and r.knobs for r in searched)

    # Each stored record replays to its rule's schedule with the knobs it names.
    mod = schedule_input(net, resolve_target("x86"), (x,), None, False, "auto")
    prims = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    funcs = {dense_workload_key(f): f for f in prims}
    for record in searched:
        func = funcs[record.workload]
        rule = tunable_rule(func, cache.target)
        point = next(p for p in rule_space(rule, func, cache.target) if p.knobs == record.knobs)
        tvm.ir.assert_structural_equal(_replay(func, record).mod["main"], point.sch.mod["main"])

    # A resumed run with more trials measures no knob set twice. (It usually measures new ones;
    # the search may also draw only points already measured, so more is not asserted.)
    again = autotune(net, "x86", trials=6, **options)
    knobs = [(r.workload, json.dumps(r.knobs, sort_keys=True)) for r in _searched(cache)]
    assert len(knobs) == len(set(knobs)) >= len(searched)
    compiled = tvm_sparse.compile(net, "x86", example_inputs=(x,), tuning_cache=cache.path)
    tuned = {r.kernel for r in compiled.report.rows if r.kernel.endswith("(tuned)")}
    assert tuned <= {f"{conv_space} (tuned)", "Matmul (tuned)"}
    assert len(tuned) == sum(w.tuned for w in again.workloads)
    np.testing.assert_allclose(
        compiled(x).detach().numpy(), net(x).detach().numpy(), rtol=1e-4, atol=1e-4
    )


def test_autotune_refuses_a_foreign_cache_file(model, cache):
    net, x = model
    cache.path.parent.mkdir(parents=True)
    cache.path.write_text("something else\n")
    with pytest.raises(TuningCacheError, match="not a tvm_sparse tuning cache"):
        autotune(net, "x86", example_inputs=(x,), trials=2, cache=cache, progress=False)


# The progress callback slows each candidate down so the kill lands mid-run on any machine.
_TUNE_SCRIPT = """
import sys, time
sys.path.insert(0, {here!r})
from tuning_testing import make_model
import tvm_sparse
net, x = make_model()
tvm_sparse.autotune(net, "x86", example_inputs=(x,), trials=9, cache={path!r},
                    kinds=("sparse",), progress=lambda message: time.sleep(1))
"""


def test_killed_tuning_resumes_without_losing_records(model, cache):
    script = _TUNE_SCRIPT.format(here=str(Path(__file__).parents[1]), path=str(cache.path))
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its builder and runner workers die with it
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if cache.path.is_file() and len(_lines(cache.path)) >= 3:  # header + 2 records
                break
            time.sleep(0.2)
        assert proc.poll() is None, "tuning finished (or failed) before it could be killed"
        assert cache.path.is_file(), "no record within 300 s"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = _lines(cache.path)
    finished = [json.loads(line) for line in before[1:] if line.endswith("}")]
    assert len(finished) >= 2

    net, x = model
    result = autotune(
        net,
        "x86",
        example_inputs=(x,),
        trials=9,
        cache=cache.path,
        kinds=("sparse",),
        progress=False,
    )
    after = _lines(cache.path)
    assert after[: len(before)] == before  # nothing rewritten, nothing lost
    records = [Record.from_json(json.loads(line)) for line in after[1:] if line.endswith("}")]
    knobs = [json.dumps(r.knobs, sort_keys=True) for r in records if r.source == "candidate"]
    assert len(knobs) == len(set(knobs)), "a finished candidate was measured again"
    (workload,) = result.workloads
    assert workload.total == len(records) and workload.measured == len(records) - len(finished)
    assert len(TuningCache(cache.target, path=cache.path)) == len(records)
