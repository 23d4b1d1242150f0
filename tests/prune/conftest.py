import pathlib
import sys

import pytest
import torch

# The model zoo lives at tests/zoo.py; make it importable whatever the rootdir.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running (training); deselect with -m 'not slow'")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
