"""Checks shared by the pruning tests."""

from __future__ import annotations

import torch


def assert_n_m(weight: torch.Tensor, n: int, m: int) -> None:
    """Every group of ``m`` consecutive weights along the flattened input axis has <= n nonzeros."""
    matrix = weight.detach().reshape(weight.shape[0], -1)
    groups = matrix.reshape(matrix.shape[0], -1, m)
    assert (groups.ne(0).sum(-1) <= n).all()


def block_counts(weight: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Nonzeros and real elements per block of the (out, in) grid (edge blocks are partial)."""
    matrix = weight.detach().reshape(weight.shape[0], -1)
    rows, cols = matrix.shape
    br, bc = block
    pr, pc = -(-rows // br) * br, -(-cols // bc) * bc
    nonzero = torch.zeros(pr, pc)
    real = torch.zeros(pr, pc)
    nonzero[:rows, :cols] = matrix.ne(0).float()
    real[:rows, :cols] = 1

    def per_block(t):
        return t.reshape(pr // br, br, pc // bc, bc).sum((1, 3))

    return per_block(nonzero), per_block(real)


def assert_block_aligned(weight: torch.Tensor, block: tuple[int, int]) -> None:
    """Zeros come in whole blocks aligned to the grid (random weights are never exactly 0)."""
    nonzero, real = block_counts(weight, block)
    assert ((nonzero == 0) | (nonzero == real)).all()
    assert (nonzero == 0).any()
