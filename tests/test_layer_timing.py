"""Per-layer evidence: a pruned matmul's candidates are built, timed on this machine, cached,
and the decision says so; every build it returns matches PyTorch."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import tvm_sparse
from tvm_sparse.kernels import default_cache_path
from tvm_sparse.layer_timing import LayerTimer
from tvm_sparse.measure import block_mask, calibrate_host
from tvm_sparse.targets import get_preset
from tvm_sparse.timing import TimingPolicy

QUICK = TimingPolicy(min_rounds=3, max_rounds=6, budget_s=0.5, round_ms=5.0)
TINY_GRID = {"ms": (16,), "blocks": ((16, 1),), "densities": (0.2,), "nm": ()}


def _weight(n: int, k: int, density: float, block=(16, 1)) -> np.ndarray:
    rng = np.random.default_rng(0)
    mask = block_mask(n, k, block, density, rng)
    return (rng.standard_normal((n, k)) * mask).astype("float32")


@pytest.fixture
def timer(tmp_path):
    return LayerTimer(get_preset("x86").tvm_target(), cache_dir=tmp_path, policy=QUICK)


def test_times_are_cached_per_weight_pattern(timer, tmp_path):
    weight = _weight(512, 256, 0.1)
    first = timer.matmul((32, 256), weight, ["bsr:16x1", "unstructured"])
    assert first is not None and not first.cached
    assert set(first.ms) == {"dense", "bsr:16x1", "unstructured"}
    assert all(ms > 0 for ms in first.ms.values())
    assert first.winner in first.ms
    assert len(list(tmp_path.glob("*.json"))) == 1
    again = timer.matmul((32, 256), weight * 3, ["bsr:16x1", "unstructured"])  # same pattern
    assert again.cached and again.ms == first.ms and again.winner == first.winner
    assert timer.measured == 1
    other = _weight(512, 256, 0.1)
    other[:16, :] = 0  # another pattern is another layer
    assert not timer.matmul((32, 256), other, ["bsr:16x1", "unstructured"]).cached


def test_n_m_layers_of_one_shape_share_a_measurement(timer):
    from tvm_sparse.measure import nm_mask

    rng = np.random.default_rng(1)
    masks = [nm_mask(64, 128, (2, 4), rng) for _ in range(2)]
    assert (masks[0] != masks[1]).any()
    for mask in masks:  # two blocks of a transformer: one shape, each its own 2:4 mask
        weight = (rng.standard_normal((64, 128)) * mask).astype("float32")
        timing = timer.matmul((32, 128), weight, ["nm:2:4", "unstructured"])
        assert timing is not None and set(timing.ms) == {"dense", "nm:2:4", "unstructured"}
    assert timer.measured == 1 and timing.cached


def test_convolutions_are_timed_between_channels_last_neighbours(timer):
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((32, 16, 3, 3)) * (rng.random((32, 16, 3, 3)) < 0.1)).astype(
        "float32"
    )
    kwargs = dict(strides=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1))
    first = timer.conv2d((1, 16, 28, 28), weight, candidates=["unstructured"], **kwargs)
    assert set(first.ms) == {"dense", "unstructured"} and not first.cached
    # the dense build of a shape is reused for another weight of that shape
    other = weight.copy()
    other[0] = 0
    second = timer.conv2d((1, 16, 28, 28), other, candidates=["unstructured"], **kwargs)
    assert not second.cached and len(timer._dense) == 1
    strided = timer.conv2d((1, 16, 28, 28), weight, candidates=["unstructured"],
                           **{**kwargs, "strides": (2, 2)})  # fmt: skip
    assert not strided.cached and len(timer._dense) == 2


def test_a_matmul_is_timed_with_its_bias_and_activation(timer):
    weight = _weight(512, 256, 0.1)
    plain = timer.matmul((32, 256), weight, ["bsr:16x1"])
    fused = timer.matmul((32, 256), weight, ["bsr:16x1"], ("bias", "relax.nn.gelu"))
    assert fused is not None and not fused.cached and timer.measured == 2  # its own record
    assert set(fused.ms) == {"dense", "bsr:16x1"} and "with its bias, gelu" in fused.where
    again = timer.matmul((32, 256), weight, ["bsr:16x1"], ("bias", "relax.nn.gelu"))
    assert again.cached and again.ms == fused.ms and "with its bias, gelu" in again.where
    assert "with its" not in plain.where


def test_widths_time_a_dense_layer_at_two_output_counts(timer):
    weight = np.random.default_rng(0).standard_normal((62, 96)).astype("float32")
    first = timer.widths((32, 96), weight, 64)
    assert first is not None and set(first.ms) == {"dense", "rounded:64"}
    assert all(ms > 0 for ms in first.ms.values()) and first.winner in first.ms
    assert timer.widths((32, 96), weight, 64).cached
    conv = ((1, 1), (1, 1, 1, 1), (1, 1))
    kernel = np.random.default_rng(0).standard_normal((12, 8, 3, 3)).astype("float32")
    timing = timer.widths((1, 8, 14, 14), kernel, 16, conv=conv)
    assert timing is not None and set(timing.ms) == {"dense", "rounded:16"}


def test_a_bad_record_is_measured_again(timer, tmp_path):
    weight = _weight(256, 256, 0.2)
    timer.matmul((8, 256), weight, ["bsr:16x1"])
    (record,) = tmp_path.glob("*.json")
    record.write_text(json.dumps({"format_version": 1, "ms": {"dense": -1}, "winner": "dense"}))
    with pytest.warns(RuntimeWarning, match="ignored"):
        timing = timer.matmul((8, 256), weight, ["bsr:16x1"])
    assert not timing.cached and timing.ms["dense"] > 0


def test_a_spent_budget_falls_back_to_the_table(tmp_path):
    timer = LayerTimer(get_preset("x86").tvm_target(), cache_dir=tmp_path, budget_s=0.0)
    assert timer.matmul((8, 256), _weight(256, 256, 0.1), ["bsr:16x1"]) is None


def _ffn(density: float, block=(16, 1)) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(384, 768), torch.nn.ReLU(), torch.nn.Linear(768, 96)
    )
    with torch.no_grad():
        for linear in (model[0], model[2]):
            n, k = linear.weight.shape
            mask = block_mask(n, k, block, density, np.random.default_rng(n))
            linear.weight.mul_(torch.from_numpy(mask.astype("float32")))
    return model.eval(), torch.randn(32, 384)


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A cache of the test's own: a compile that times layers first measures a calibration
    table (a small grid here), which later tests must not read."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(calibrate_host, "QUICK_GRID", TINY_GRID)


def _compile_timed(model, x, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return tvm_sparse.compile(model, "x86", example_inputs=(x,), measure_layers=True, **kwargs)


def test_compile_decides_matmuls_by_their_measured_times(own_cache):
    model, x = _ffn(0.1)
    compiled = _compile_timed(model, x)
    rows = [r for r in compiled.report.rows if "measured" in r.reason]
    assert len(rows) == 2, str(compiled.report)
    for row in rows:
        assert "measured on this machine" in row.reason and "dense" in row.reason
    # each layer is timed with what fuses into its dense matmul in the model
    assert "with its bias, relu" in rows[0].reason, rows[0].reason
    assert "with its bias:" in rows[1].reason, rows[1].reason
    assert any("timed the candidates of 2 layer(s)" in n for n in compiled.report.notes)
    assert any("measured a calibration table for this machine" in n
               for n in compiled.report.notes)  # fmt: skip
    assert default_cache_path(get_preset("x86").tvm_target()).is_file()
    with torch.no_grad():
        np.testing.assert_allclose(compiled(x), model(x).numpy(), rtol=1e-4, atol=1e-4)
    # The second compile reads the times back and decides the same way.
    again = tvm_sparse.compile(model, "x86", example_inputs=(x,), measure_layers=True)
    cached = [r for r in again.report.rows if "measured on this machine with its bias" in r.reason
              and "(cached)" in r.reason]  # fmt: skip
    assert [(r.name, r.kernel) for r in cached] == [(r.name, r.kernel) for r in rows]
    assert not any("timed the candidates" in n for n in again.report.notes)
    assert not any("calibration table" in n for n in again.report.notes)


def test_measure_layers_needs_a_target_that_runs_here_or_a_board():
    model, x = _ffn(0.1)
    with pytest.raises(ValueError, match="measure_layers=True .* does not run here.* rpc="):
        tvm_sparse.compile(model, "arm-cortex-a72", example_inputs=(x,), measure_layers=True)
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        tvm_sparse.compile(model, "arm-cortex-a72", example_inputs=(x,), rpc="board")


def test_layers_are_timed_on_the_device_behind_an_rpc_session(own_cache):
    # An in-process RPC session: uploads, loads and times through the same calls as a board's
    # (the tests marked arm do it on the emulated aarch64 device).
    from tvm import rpc

    model, x = _ffn(0.1)
    compiled = _compile_timed(model, x, rpc=rpc.LocalSession(), verify_speed=False)
    rows = [r for r in compiled.report.rows if "measured" in r.reason]
    assert len(rows) == 2, str(compiled.report)
    assert all("measured on the rpc device" in r.reason for r in rows), str(compiled.report)
    assert any("calibration table for the rpc device" in n for n in compiled.report.notes)
    with torch.no_grad():
        np.testing.assert_allclose(compiled(x), model(x).numpy(), rtol=1e-4, atol=1e-4)


def test_small_matmul_weights_are_cycled_through_more_than_an_l2():
    from tvm_sparse.layer_timing import _CYCLED_WEIGHT_BYTES, _copies, _Layer

    def layer(op, shape):
        return _Layer(op, (128, shape[-1]), np.zeros(shape, "float32"))

    small = _copies(layer("matmul", (256, 256)))  # 256 KiB: fits an L2 alone
    assert small * 256 * 256 * 4 >= min(_CYCLED_WEIGHT_BYTES, 16 * 256 * 256 * 4)
    assert small > 1
    assert _copies(layer("matmul", (3072, 768))) == 1  # 9 MiB: past any L2 already
    assert _copies(layer("conv2d", (64, 64, 3, 3))) == 1
