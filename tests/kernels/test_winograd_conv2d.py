import numpy as np
import pytest
import torch
import tvm

from tvm_sparse.kernels.winograd_conv2d import (
    WinogradKnobs,
    winograd_applies,
    winograd_conv2d,
    winograd_weight,
)
from tvm_sparse.targets import get_preset

TARGET = get_preset("x86").tvm_target()  # the host CPU: tests run the code they build
AVX2 = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
AVX512 = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})


def _reference(x, w, bias, residual, relu):
    """The same conv in PyTorch (NHWC input, HWIO weight)."""
    y = torch.nn.functional.conv2d(
        torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(w).permute(3, 2, 0, 1), padding=1
    )
    y = y.permute(0, 2, 3, 1).numpy() + bias
    if residual is not None:
        y = y + residual
    return np.maximum(y, 0) if relu else y


def _run(target, knobs, h, w, c, f, *, residual, relu, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, h, w, c)).astype("float32")
    weight = (rng.standard_normal((3, 3, c, f)) * 0.2).astype("float32")
    bias = rng.standard_normal(f).astype("float32")
    res = rng.standard_normal((1, h, w, f)).astype("float32") if residual else None
    func = winograd_conv2d(h, w, c, f, knobs=knobs, cores=2, residual=residual, relu=relu)
    assert func.attrs["tirx.is_scheduled"] and func.attrs["tvm_sparse.kernel"] == "winograd_conv2d"
    nr = knobs.output_vectors(f) * knobs.lanes
    args = [x, winograd_weight(weight, nr), bias, *([res] if residual else [])]
    tensors = [tvm.runtime.tensor(a) for a in [*args, np.zeros((1, h, w, f), "float32")]]
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target)
    lib.jit()["main"](*tensors)
    return tensors[-1].numpy(), _reference(x, weight, bias, res, relu)


@pytest.mark.parametrize(
    "h, w, c, f, residual, relu",
    [
        (8, 8, 16, 16, False, False),
        (6, 10, 32, 48, True, True),  # 3 output vectors, tiles of 15 in a row
        (14, 14, 32, 64, False, True),  # 49 tiles: the last task's chunk is short
        (56, 56, 16, 32, True, False),
        (2, 2, 16, 16, True, True),  # one tile: every input is padding-adjacent
    ],
)
def test_matches_pytorch(h, w, c, f, residual, relu):
    out, ref = _run(
        TARGET, WinogradKnobs.for_target(TARGET), h, w, c, f, residual=residual, relu=relu
    )
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("knobs", [dict(tile_rows=2, tiles_per_task=6), dict(tile_vectors=1)])
def test_knobs_change_tiling_not_results(knobs):
    base = WinogradKnobs.for_target(TARGET)
    knobs = WinogradKnobs(**{**base.__dict__, **knobs})
    out, ref = _run(TARGET, knobs, 10, 6, 16, 32, residual=True, relu=True, seed=1)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_avx2_tiles():
    knobs = WinogradKnobs.for_target(AVX2)
    assert (knobs.lanes, knobs.tile_vectors) == (8, 2)
    out, ref = _run(AVX2, knobs, 12, 12, 24, 40, residual=False, relu=True, seed=2)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_task_tiles_split_evenly_over_cores():
    knobs = WinogradKnobs.for_target(AVX512)
    # 28x28 pixels: 196 tiles; 7 tasks of 28 would leave a core idle, 10 of 20 do not
    assert knobs.task_tiles(196, 128, 4, 64, cores=2) == 20
    assert knobs.task_tiles(784, 64, 4, 64, cores=2) == 28
    assert knobs.rows(32) == 8 and knobs.rows(64) == 4
    # the per-task buffers stay within the budget for wide convs
    assert knobs.task_tiles(784, 2048, 4, 64, cores=2) * 16 * 4 * (2048 + 64) <= 1 << 20


def test_applies_names_the_reason():
    assert winograd_applies((1, 56, 56, 64), (3, 3, 64, 64), 16) is None
    assert "batch 1" in winograd_applies((2, 56, 56, 64), (3, 3, 64, 64), 16)
    assert "odd" in winograd_applies((1, 7, 7, 64), (3, 3, 64, 64), 16)
    assert "vectors" in winograd_applies((1, 8, 8, 3), (3, 3, 3, 64), 16)
    assert "3x3" in winograd_applies((1, 8, 8, 16), (5, 5, 16, 16), 16)
    with pytest.raises(ValueError, match="even output sizes"):
        winograd_conv2d(7, 7, 16, 16, knobs=WinogradKnobs(), cores=2)


_GUARDED_RUN = """
import ctypes, mmap, sys
import numpy as np, tvm
sys.path.insert(0, {tests!r})
from kernels.test_winograd_conv2d import TARGET
from tvm_sparse.kernels.winograd_conv2d import WinogradKnobs, winograd_conv2d, winograd_weight

h = w = 8; c = f = 16
page = mmap.PAGESIZE
nbytes = h * w * c * 4
region = mmap.mmap(-1, page + -(-nbytes // page) * page)
base = ctypes.addressof(ctypes.c_char.from_buffer(region))
libc = ctypes.CDLL(None)
assert libc.mprotect(ctypes.c_void_p(base), page, 0) == 0  # no access before the image
x = np.frombuffer(region, "float32", h * w * c, offset=page).reshape(1, h, w, c)
x[:] = 1.0
knobs = WinogradKnobs.for_target(TARGET)
func = winograd_conv2d(h, w, c, f, knobs=knobs, cores=2)
lib = tvm.compile(tvm.IRModule({{"main": func.with_attr("global_symbol", "main")}}), TARGET)
weight = winograd_weight(np.ones((3, 3, c, f), "float32"), knobs.output_vectors(f) * knobs.lanes)
out = tvm.runtime.tensor(np.zeros((1, h, w, f), "float32"))
bias = np.zeros(f, "float32")
args = [tvm.runtime.from_dlpack(x), tvm.runtime.tensor(weight), tvm.runtime.tensor(bias), out]
lib.jit()["main"](*args)
print(float(out.numpy()[0, 0, 0, 0]))  # a corner: 4 pixels of 16 channels
"""


def test_padding_reads_nothing_outside_the_image():
    """The input sits right after a page that may not be read: the padding must come from
    the predicate, not from a load before the image (which a select would still perform)."""
    import os
    import subprocess
    import sys

    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run(
        [sys.executable, "-c", _GUARDED_RUN.format(tests=tests)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, f"the kernel read outside its input: {run.stderr[-2000:]}"
    assert float(run.stdout.strip().splitlines()[-1]) == 4 * 16
