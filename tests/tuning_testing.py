"""A tiny model with one block-sparse and one dense layer, for the tuning tests."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tvm_sparse.measure import block_mask


class SparseDense(nn.Module):
    """``fc1`` keeps 20% of its 16x1 blocks (a sparse kernel); ``fc2`` is dense."""

    def __init__(self, d: int = 128, hidden: int = 256):
        super().__init__()
        rng = np.random.default_rng(0)
        self.fc1 = nn.Linear(d, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, d, bias=False)
        with torch.no_grad():
            mask = block_mask(hidden, d, (16, 1), 0.2, rng)
            self.fc1.weight.mul_(torch.from_numpy(mask.astype("float32")))

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def make_model(rows: int = 32):
    torch.manual_seed(0)
    return SparseDense().eval(), torch.randn(rows, 128)
