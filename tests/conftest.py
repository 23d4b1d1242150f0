"""Shared fixtures and markers for the test suite."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
# Tests of the passes check their decisions, which a timing-based choice of build would make
# flaky; tests/test_compile.py checks the speed check itself with verify_speed=True.
os.environ.setdefault("TVM_SPARSE_VERIFY_SPEED", "0")


def pytest_configure(config: pytest.Config) -> None:
    for marker, text in [
        ("slow", "takes more than a few seconds of compilation or training"),
        ("tuning", "runs MetaSchedule tuning"),
        ("arm", "runs on the emulated aarch64 device over TVM RPC (../shared/arm-device)"),
        ("gpu", "needs an NVIDIA GPU; skipped without one"),
    ]:
        config.addinivalue_line("markers", f"{marker}: {text}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import tvm

        has_gpu = tvm.cuda(0).exist
    except Exception:  # no CUDA runtime in this TVM build
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="no NVIDIA GPU on this machine")
    for item in items:
        if item.get_closest_marker("gpu") is not None and not has_gpu:
            item.add_marker(skip_gpu)
