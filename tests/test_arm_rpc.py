"""Arm (aarch64 + NEON): build for ``arm-cortex-a72``, inspect the code, run over TVM RPC.

The tests marked ``arm`` run on the emulated aarch64 device of ``../shared/arm-device``
(qemu-user in a chroot, served by TVM's own ``rpc_server``). Its first-time setup installs host
packages and a 600 MB root filesystem (2.5-6 min, root only), so it only runs when asked for::

    python -m pytest -m arm tests/test_arm_rpc.py      # sets the device up if needed

A plain ``pytest`` run uses the device when it is already set up and skips otherwise. The tests
without the marker need no device: they build for the target and read the assembly.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from pathlib import Path

import arm_device
import numpy as np
import pytest
import torch
import zoo
from torch import nn

import tvm_sparse

RTOL, ATOL = 1e-4, 1e-4
TARGET = "arm-cortex-a72"
_NEON_FMA = re.compile(r"\bfmla\s+v\d+\.4s")


def _free_port_pair() -> int:
    """A port P with P and P + 1 free (``start.sh`` gives the server the range P..P+1)."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of ports on 127.0.0.1")


@pytest.fixture(scope="module")
def arm_server(request):
    """Start the emulated aarch64 RPC server for this module; yields ``(host, port)``."""
    scripts = arm_device.prepare(request)
    port = _free_port_pair()
    pid = arm_device.start(scripts, port)
    try:
        yield "127.0.0.1", port
    finally:
        arm_device.stop(scripts, pid)


@pytest.fixture(scope="module")
def arm_session(arm_server):
    """One RPC session for the module: the server serves one session at a time, and a session
    stays open while any remote model or tensor of it is alive, so a second ``connect`` would
    wait for the first to be garbage-collected."""
    from tvm import rpc

    host, port = arm_server
    return rpc.connect(host, port, session_timeout=600)


def _assert_matches(model: nn.Module, x: torch.Tensor, got: torch.Tensor) -> None:
    with torch.no_grad():
        expected = model(x)
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=RTOL, atol=ATOL)


def _assert_every_kernel_recorded(report: tvm_sparse.CompileReport) -> None:
    assert report.target == TARGET
    missing = [r.name for r in report.rows if not r.kernel or r.kernel == "unscheduled"]
    assert not missing, f"ops without a scheduled kernel on {TARGET}: {missing}"


# -- on the emulated device ---------------------------------------------------------------------


@pytest.mark.arm
@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_zoo_runs_on_arm_over_rpc(name, arm_session):
    model, (x,) = zoo.make(name)
    compiled = tvm_sparse.compile(model, TARGET, example_inputs=(x,))
    remote = compiled.to_remote(arm_session)
    _assert_matches(model, x, remote(x))
    assert isinstance(remote(x.numpy()), np.ndarray)
    _assert_every_kernel_recorded(compiled.report)


@pytest.mark.arm
@pytest.mark.parametrize(
    ("name", "prune_kwargs"),
    [
        ("cnn", {"pattern": "channel", "sparsity": 0.5}),
        ("mlp", {"pattern": "block", "block_shape": (16, 1), "sparsity": 0.9}),
    ],
    ids=["channel-cnn", "block16x1-mlp"],
)
def test_pruned_model_runs_on_arm_over_rpc(name, prune_kwargs, arm_session):
    model, (x,) = zoo.make(name)
    tvm_sparse.prune(model, (x,), **prune_kwargs)
    compiled = tvm_sparse.compile(model, TARGET, example_inputs=(x,))
    _assert_matches(model, x, compiled.to_remote(arm_session)(x))
    _assert_every_kernel_recorded(compiled.report)
    if prune_kwargs["pattern"] == "block":
        # 90% of the weights are zero: at least one layer runs a sparse kernel on the Arm CPU
        sparse = [r for r in compiled.report.rows if r.op.startswith(("bsr_matmul", "nm_matmul"))]
        assert sparse, f"no sparse kernel in the report:\n{compiled.report}"
        assert any("faster" in r.reason for r in compiled.report.rows)


@pytest.mark.arm
def test_winograd_convs_run_on_arm_over_rpc(arm_session):
    # batch 1, even sizes, whole NEON vectors: the 3x3 convs run as winograd_conv2d
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(8, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 12, 3, 1, 1), nn.ReLU()
    ).eval()
    x = torch.randn(1, 8, 10, 6)
    compiled = tvm_sparse.compile(model, TARGET, example_inputs=(x,))
    _assert_matches(model, x, compiled.to_remote(arm_session)(x))
    _assert_every_kernel_recorded(compiled.report)
    assert [r.op for r in compiled.report.rows].count("winograd_conv2d") == 2


@pytest.mark.arm
def test_a_table_calibrated_over_rpc_decides_arm_compiles(arm_session, tmp_path, monkeypatch):
    # The emulated device proves the path (build here, run there, store, decide), not the rates.
    from tvm_sparse.kernels import default_cache_path, load_calibration
    from tvm_sparse.measure import calibrate

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    lines = []
    grid = {"n": 64, "k": 64, "ms": (8,), "blocks": ((8, 1),), "densities": (0.1,), "nm": ()}
    table = calibrate(TARGET, rpc=arm_session, progress=lines.append, **grid)
    assert table.host == "arm_neon" and table.machine == "the rpc device"
    assert all(
        0 < rate < 1e4 for rate in [*table.dense.values(), table.sparse["bsr_matmul[8x1]"][8][0.1]]
    )
    assert sum(line.startswith("calibrating arm_neon") for line in lines) == 2
    arm = tvm_sparse.targets.get_preset(TARGET).tvm_target()
    assert default_cache_path(arm).is_file()
    assert load_calibration(arm).evidence.startswith("calibrated (arm_neon table measured by")
    model, (x,) = zoo.make("mlp")
    tvm_sparse.prune(model, (x,), pattern="block", block_shape=(8, 1), sparsity=0.9)
    compiled = tvm_sparse.compile(model, TARGET, example_inputs=(x,))
    # every pruned layer the table weighed names it, whichever way the emulator's rates went
    decided = [r for r in compiled.report.rows if "density" in r.reason]
    assert decided and all("calibrated (arm_neon table" in r.reason for r in decided), str(
        compiled.report
    )
    _assert_matches(model, x, compiled.to_remote(arm_session)(x))


@pytest.mark.arm
def test_a_compile_times_its_layers_on_the_board(arm_session, tmp_path, monkeypatch):
    from tvm_sparse.measure import calibrate_host

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(calibrate_host, "QUICK_GRID", {"ms": (8,), "blocks": ((16, 1),),
                                                       "densities": (0.2,), "nm": ()})  # fmt: skip
    model, (x,) = zoo.make("mlp")
    tvm_sparse.prune(model, (x,), pattern="block", block_shape=(16, 1), sparsity=0.9)
    compiled = tvm_sparse.compile(model, TARGET, example_inputs=(x,), rpc=arm_session,
                                  measure_layers=True)  # fmt: skip
    timed = [r for r in compiled.report.rows if "measured on the rpc device" in r.reason]
    assert timed, str(compiled.report)
    assert any("calibration table for the rpc device" in n for n in compiled.report.notes)
    _assert_matches(model, x, compiled.to_remote(arm_session)(x))


class _TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 8)

    def forward(self, x):
        y = self.fc(x)
        return {"logits": y, "pair": (torch.relu(y), y.sum(dim=1))}


@pytest.mark.arm
def test_nested_outputs_and_benchmark_over_rpc(arm_session):
    torch.manual_seed(0)
    model = _TwoOutputs().eval()
    x = torch.randn(2, 16)
    remote = tvm_sparse.compile(model, TARGET, example_inputs=(x,)).to_remote(arm_session)
    got = remote(x)
    with torch.no_grad():
        expected = model(x)
    assert set(got) == {"logits", "pair"} and isinstance(got["pair"], tuple)
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match="dimension 0 is 3"):
        remote(torch.randn(3, 16))
    timing = remote.benchmark(x, warmup=1, repeat=2)
    assert timing["repeat"] == 2 and timing["min_ms"] > 0


# -- no device: the build for the target ---------------------------------------------------------


def test_arm_build_uses_neon_fma():
    """The dense CPU rules vectorise to 128-bit NEON: fused multiply-adds on 4 fp32 lanes."""
    model, (x,) = zoo.make("mlp")
    compiled = tvm_sparse.compile(model, TARGET, example_inputs=(x,), sparsity="off")
    (device_code,) = compiled.executable.mod.imports
    assert device_code.kind == "llvm"
    asm = device_code.inspect_source("asm")
    assert _NEON_FMA.search(asm), "no `fmla vN.4s` in the aarch64 assembly"
    assert not re.search(r"\b(ymm|zmm|xmm)\d+", asm), "x86 registers in an aarch64 build"
    assert any(r.kernel.startswith("Matmul") for r in compiled.report.rows)


@pytest.mark.skipif(
    not (shutil.which("aarch64-linux-gnu-g++") and shutil.which("aarch64-linux-gnu-objdump")),
    reason="no aarch64 cross toolchain (../shared/arm-device/setup.sh installs it)",
)
def test_exported_arm_library_is_aarch64_with_neon(tmp_path):
    model, (x,) = zoo.make("transformer")
    compiled = tvm_sparse.compile(model, TARGET, example_inputs=(x,))
    path = compiled.export_library(tmp_path / "model.so")
    header = Path(path).read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    disassembly = subprocess.run(
        ["aarch64-linux-gnu-objdump", "-d", path], capture_output=True, text=True, check=True
    ).stdout
    assert _NEON_FMA.search(disassembly)
    meta = json.loads(Path(path + ".meta.json").read_text())
    assert meta["preset"] == TARGET and "aarch64" in meta["target"]
