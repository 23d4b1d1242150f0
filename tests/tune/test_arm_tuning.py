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

import arm_device
import numpy as np
import pytest

import tvm_sparse
from tvm_sparse.tune import RPCTracker, autotune

TARGET = "arm-cortex-a72"
KEY = "tvm-sparse-tune-arm"
TRACKER_PORT, DEVICE_PORT = 9390, 9290  # apart from the ports of tests/test_arm_rpc.py


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
    scripts = arm_device.prepare(request)
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
        device_pid = arm_device.start(scripts, DEVICE_PORT, f"127.0.0.1:{TRACKER_PORT}", KEY)
        time.sleep(2)  # registration with the tracker
        yield RPCTracker("127.0.0.1", TRACKER_PORT, KEY, devices=1, session_timeout_s=300)
    finally:
        if device_pid is not None:
            arm_device.stop(scripts, device_pid)
        # The tracker serves from a child process: end its whole session.
        os.killpg(tracker_proc.pid, signal.SIGKILL)
        tracker_proc.wait()


@pytest.mark.arm
@pytest.mark.tuning
def test_tune_sparse_kernel_on_arm_then_compile(tracker, tmp_path):
    from tuning_testing import make_model

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
