"""Fixtures of the tuning tests: the model of ``tuning_testing``, the host target, a cache under
``tmp_path``."""

from __future__ import annotations

import pytest
from tuning_testing import make_model

from tvm_sparse.targets import resolve_target
from tvm_sparse.tune import TuningCache


@pytest.fixture
def model():
    return make_model()


@pytest.fixture
def target():
    return resolve_target("x86").tvm_target()


@pytest.fixture
def cache(tmp_path, target):
    return TuningCache(target, tmp_path / "cache")
