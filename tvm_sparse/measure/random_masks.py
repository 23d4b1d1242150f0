"""Random pruning masks of a given pattern, for weights whose kernels are measured (calibration,
benchmarks, tests): the time of a sparse kernel depends on where the nonzeros are, not on
their values."""

from __future__ import annotations

import numpy as np

__all__ = ["block_mask", "nm_mask"]


def block_mask(
    n: int, k: int, block: tuple[int, int], density: float, rng: np.random.Generator
) -> np.ndarray:
    """A ``(n, k)`` 0/1 mask keeping a random ``density`` of ``block``-shaped blocks."""
    r, c = block
    grid = rng.random((-(-n // r), -(-k // c))) < density
    return np.kron(grid, np.ones((r, c), dtype=bool))[:n, :k]


def nm_mask(n: int, k: int, nm: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A ``(n, k)`` mask keeping ``nm[0]`` random entries of every ``nm[1]`` consecutive ones."""
    keep, group = nm
    k_pad = -(-k // group) * group
    scores = rng.random((n, k_pad // group, group))
    ranks = scores.argsort(axis=2).argsort(axis=2)
    return (ranks < keep).reshape(n, k_pad)[:, :k]
