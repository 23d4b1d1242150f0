"""Shared fixtures and markers for the test suite."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))
# Hermetic caches: tuning records or a calibration table in the user's ~/.cache/tvm_sparse would
# change what the tests compile, and tests must not write there. Every cache of the library lives
# under $XDG_CACHE_HOME (tvm_sparse._paths.cache_root, read at each call), so pointing it at a
# directory of this session, before any test imports tvm_sparse, covers them all; subprocesses
# (the CLI tests) inherit it.
CACHE_HOME = tempfile.mkdtemp(prefix="tvm_sparse_test_cache_")
os.environ["XDG_CACHE_HOME"] = CACHE_HOME
# Tests of the passes check their decisions, which a timing-based choice of build would make
# flaky; tests/test_compile.py checks the speed check itself with verify_speed=True, and
# tests/test_layer_timing.py the per-layer timing with measure_layers=True.
os.environ.setdefault("TVM_SPARSE_VERIFY_SPEED", "0")
os.environ.setdefault("TVM_SPARSE_MEASURE_LAYERS", "0")
# CUDA compiles would run nvcc for the report's GPU resource table; the tests that check it
# ask for it (CompiledModel.gpu_resources), the others keep their compiles short.
os.environ.setdefault("TVM_SPARSE_GPU_RESOURCES", "0")


def pytest_configure(config: pytest.Config) -> None:
    for marker, text in [
        ("slow", "takes more than a few seconds of compilation or training"),
        ("tuning", "runs MetaSchedule tuning"),
        ("arm", "runs on the emulated aarch64 device over TVM RPC (../shared/arm-device)"),
        ("gpu", "needs an NVIDIA GPU; skipped without one"),
    ]:
        config.addinivalue_line("markers", f"{marker}: {text}")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(CACHE_HOME, ignore_errors=True)


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
