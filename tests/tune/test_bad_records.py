"""Records the compile cannot use are skipped with a warning naming them, never raised."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import tvm_sparse
from tvm_sparse.measure import nm_mask
from tvm_sparse.targets import resolve_target
from tvm_sparse.tune import TuningCache, TuningCacheWarning
from tvm_sparse.tune.cache import Record
from tvm_sparse.tune.space import dense_workload_key, sparse_sites
from tvm_sparse.tune.workloads import schedule_input

SPARSITY = {"*": "nm"}
#: The knobs of a BSR "rows" kernel: no N:M kernel can be built with them.
BSR_KNOBS = {"variant": "rows", "lanes": 16, "m_tile": 4, "group": 1, "row_block": 4}


class NMDense(nn.Module):
    """``fc1`` is 2:4 sparse (the N:M kernel), ``fc2`` dense."""

    def __init__(self, d: int = 96, hidden: int = 128):
        super().__init__()
        self.fc1 = nn.Linear(d, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, d, bias=False)
        with torch.no_grad():
            mask = nm_mask(hidden, d, (2, 4), np.random.default_rng(0))
            self.fc1.weight.mul_(torch.from_numpy(mask.astype("float32")))

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture
def nm_model():
    torch.manual_seed(0)
    return NMDense().eval(), torch.randn(32, 96)


def _fill(cache: TuningCache, mod) -> tuple[dict, str]:
    """The measured defaults, a faster N:M record with another kernel's knobs, a slower but
    valid one, a dense record whose trace is garbage, then a torn line; returns the valid knobs
    and the line of the bad sparse record."""
    (site,) = sparse_sites(mod)
    assert site.spec.kernel in ("nm", "nm_permute")
    tile = "m_tile" if site.spec.kernel == "nm" else "rows"
    valid = {**site.knobs, tile: max(site.knobs[tile] // 2, 1)}
    assert valid != site.knobs
    cache.append(Record("sparse", site.key, "default", 3e-5, knobs=site.knobs))
    cache.append(Record("sparse", site.key, "candidate", 1e-5, knobs=BSR_KNOBS))
    bad_line = f"{cache.path}:3"
    cache.append(Record("sparse", site.key, "candidate", 2e-5, knobs=valid))
    dense = next(f for g, f in mod.functions_items() if g.name_hint == "matmul")
    key = dense_workload_key(dense)
    cache.append(Record("dense", key, "default", 2e-5, name="matmul"))
    cache.append(Record("dense", key, "metaschedule", 1e-5, name="matmul", record=["garbage"]))
    with open(cache.path, "a", encoding="utf-8") as f:
        f.write(json.dumps(Record("sparse", site.key, "candidate", 1e-6).to_json())[:40] + "\n")
    return valid, bad_line


def test_mismatching_and_torn_records_are_skipped(nm_model, tmp_path):
    net, x = nm_model
    preset = resolve_target("x86")
    cache = TuningCache(preset.tvm_target(), tmp_path)
    mod = schedule_input(net, preset, (x,), None, False, SPARSITY)
    valid, bad_line = _fill(cache, mod)

    with pytest.warns(TuningCacheWarning) as caught:
        compiled = tvm_sparse.compile(
            net, "x86", example_inputs=(x,), sparsity=SPARSITY, tuning_cache=cache.path
        )
    messages = [str(w.message) for w in caught if w.category is TuningCacheWarning]
    notes = compiled.report.notes
    for found in (messages, notes):
        assert any(bad_line in m and "tuning record skipped" in m for m in found), found
        assert any("unreadable line(s) (line 7)" in m for m in found), found
        assert any("matmul workload" in m and "garbage" not in m for m in found), found
    # The next fastest record of the N:M kernel is used; the dense layer keeps its default.
    kernels = {r.kernel for r in compiled.report.rows if r.kernel}
    assert "nm_matmul[2:4] (tuned)" in kernels
    assert "metaschedule (tuned)" not in kernels
    with torch.no_grad():
        expected = net(x).numpy()
    np.testing.assert_allclose(compiled(x).detach().numpy(), expected, rtol=1e-4, atol=1e-4)


def test_records_that_only_have_bad_knobs_leave_the_default(nm_model, tmp_path):
    net, x = nm_model
    preset = resolve_target("x86")
    cache = TuningCache(preset.tvm_target(), tmp_path)
    (site,) = sparse_sites(schedule_input(net, preset, (x,), None, False, SPARSITY))
    cache.append(Record("sparse", site.key, "default", 3e-5, knobs=site.knobs))
    # Knobs with the right names whose values the generator refuses.
    refused = {"group": 7} if site.spec.kernel == "nm" else {"rows": 0}
    cache.append(Record("sparse", site.key, "candidate", 1e-5, knobs={**site.knobs, **refused}))
    with pytest.warns(TuningCacheWarning, match=f"{cache.path}:3"):
        compiled = tvm_sparse.compile(
            net, "x86", example_inputs=(x,), sparsity=SPARSITY, tuning_cache=cache.path
        )
    assert not any(r.kernel.endswith("(tuned)") for r in compiled.report.rows)
    with torch.no_grad():
        expected = net(x).numpy()
    np.testing.assert_allclose(compiled(x).detach().numpy(), expected, rtol=1e-4, atol=1e-4)
