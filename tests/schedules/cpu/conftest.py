"""Every CPU schedule-rule test starts from the same seeds (helpers: ``schedule_testing``)."""

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
