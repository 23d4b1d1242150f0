"""Tuning a sparse kernel on the emulated aarch64 board through a TVM RPC tracker.

Marked ``arm``: needs root and the device of ``../shared/arm-device`` (``pytest -m arm`` sets it
up). A tracker on 127.0.0.1 hands the board registered under a test key to MetaSchedule's
``RPCRunner``; builds are cross-linked with ``aarch64-linux-gnu-g++``.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tvm_sparse
from tvm_sparse.tune import RPCTracker, autotune

TARGET = "arm-cortex-a72"
KEY = "tvm-sparse-tune-arm"
TRACKER_PORT, DEVICE_PORT = 9390, 9290  # apart from the ports of tests/test_arm_rpc.py


def _arm_device_dir() -> Path:
    default = Path(__file__).resolve().parents[3] / "shared" / "arm-device"
    return Path(os.environ.get("TVM_SPARSE_ARM_DEVICE", default))


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_listening(port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def tracker(request):
    """A tracker on 127.0.0.1 with one emulated board under ``KEY``; yields an RPCTracker."""
    scripts = _arm_device_dir()
    if not (scripts / "start.sh").is_file():
        pytest.skip(f"no emulated Arm device scripts in {scripts}")
    if os.name != "posix" or os.geteuid() != 0 or os.uname().machine != "x86_64":
        pytest.skip("the emulated Arm device needs root on an x86_64 host")
    rootfs = Path(os.environ.get("ARM_ROOTFS", "/tmp/arm-rootfs"))
    selected = "arm" in (request.config.getoption("markexpr", "") or "")
    if not selected and not (rootfs / ".arm-device-debootstrap").is_file():
        pytest.skip("emulated Arm device not set up: run `pytest -m arm` to set it up")
    setup = subprocess.run(
        [str(scripts / "setup.sh")], capture_output=True, text=True, timeout=1200, check=False
    )
    if setup.returncode != 0:
        pytest.skip(f"emulated Arm device setup failed: {setup.stderr.strip()[-800:]}")
    if not (_port_free(TRACKER_PORT) and _port_free(DEVICE_PORT) and _port_free(DEVICE_PORT + 1)):
        pytest.skip(f"ports {TRACKER_PORT} / {DEVICE_PORT} are taken")
    tracker_proc = subprocess.Popen(
        [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1"]
        + ["--port", str(TRACKER_PORT), "--port-end", str(TRACKER_PORT + 1)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    device_pid = None
    try:
        if not _wait_listening(TRACKER_PORT, 60):
            pytest.skip("the RPC tracker did not start")
        start = subprocess.run(
            [str(scripts / "start.sh"), str(DEVICE_PORT), f"127.0.0.1:{TRACKER_PORT}", KEY],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if start.returncode != 0:
            pytest.skip(f"emulated Arm device did not start: {start.stderr.strip()[-800:]}")
        device_pid = start.stdout.strip().splitlines()[-1]
        time.sleep(2)  # registration with the tracker
        yield RPCTracker("127.0.0.1", TRACKER_PORT, KEY, devices=1, session_timeout_s=300)
    finally:
        if device_pid is not None:
            subprocess.run([str(scripts / "stop.sh"), device_pid], timeout=60, check=False)
        # The tracker serves from a child process: end its whole session.
        os.killpg(tracker_proc.pid, signal.SIGKILL)
        tracker_proc.wait()


@pytest.mark.arm
@pytest.mark.tuning
def test_tune_sparse_kernel_on_arm_then_compile(tracker, tmp_path):
    from conftest import make_model

    net, x = make_model(rows=8)
    result = autotune(
        net,
        TARGET,
        example_inputs=(x,),
        trials=3,
        kinds=("sparse",),
        rpc=tracker,
        cache=tmp_path,
        build_timeout_s=600,
        run_timeout_s=300,
        progress=False,
    )
    (workload,) = result.workloads
    # three candidates, plus two interleaved default/winner pairs when a candidate looked faster
    assert workload.measured in (3, 7) and math.isfinite(workload.default_s), result.table()
    compiled = tvm_sparse.compile(net, TARGET, example_inputs=(x,), tuning_cache=tmp_path)
    tuned = [r for r in compiled.report.rows if r.kernel.endswith("(tuned)")]
    assert bool(tuned) == workload.tuned, compiled.report.table()

    from tvm import rpc

    session = rpc.connect_tracker(tracker.host, tracker.port).request(KEY, session_timeout=300)
    got = compiled.to_remote(session)(x)
    np.testing.assert_allclose(got.numpy(), net(x).detach().numpy(), rtol=1e-4, atol=1e-4)
