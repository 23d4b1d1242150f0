"""The emulated aarch64 device of ``../shared/arm-device`` for the tests marked ``arm``.

Its first-time setup installs host packages and a 600 MB root filesystem (2.5-6 min, root
only), so :func:`prepare` only sets it up when the run selected ``-m arm``; otherwise a device
that is not set up yet skips the test.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


def device_dir() -> Path:
    """The device's scripts: ``$TVM_SPARSE_ARM_DEVICE`` or ``shared/arm-device`` beside the repo."""
    default = Path(__file__).resolve().parents[2] / "shared" / "arm-device"
    return Path(os.environ.get("TVM_SPARSE_ARM_DEVICE", default))


def prepare(request: pytest.FixtureRequest) -> Path:
    """Skip unless the device can run here; set it up (idempotent); return its scripts."""
    scripts = device_dir()
    if not (scripts / "setup.sh").is_file():
        pytest.skip(f"no emulated Arm device scripts in {scripts}")
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("the emulated Arm device needs root (binfmt_misc, chroot, unshare)")
    if os.uname().machine != "x86_64":
        pytest.skip(f"the emulated Arm device is made for x86_64 hosts, not {os.uname().machine}")
    rootfs = Path(os.environ.get("ARM_ROOTFS", "/tmp/arm-rootfs"))
    selected = "arm" in (request.config.getoption("markexpr", "") or "")
    if not selected and not (rootfs / ".arm-device-debootstrap").is_file():
        pytest.skip("emulated Arm device not set up: run `pytest -m arm` to set it up (minutes)")
    setup = subprocess.run(
        [str(scripts / "setup.sh")], capture_output=True, text=True, timeout=1200, check=False
    )
    if setup.returncode != 0:
        pytest.skip(f"emulated Arm device setup failed: {setup.stderr.strip()[-800:]}")
    return scripts


def start(scripts: Path, port: int, *tracker_and_key: str) -> str:
    """Start the RPC server on ``port`` (optionally registered with a tracker under a key)."""
    started = subprocess.run(
        [str(scripts / "start.sh"), str(port), *tracker_and_key],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if started.returncode != 0:
        pytest.skip(f"emulated Arm device did not start: {started.stderr.strip()[-800:]}")
    return started.stdout.strip().splitlines()[-1]


def stop(scripts: Path, pid: str) -> None:
    subprocess.run([str(scripts / "stop.sh"), pid], timeout=60, check=False)
