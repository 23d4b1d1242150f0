"""A NumPy model of ``mma.sp.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32``, per warp.

:func:`emulate_mma_sp` takes what each of the 32 threads holds (4 ``A`` registers, 4 ``B``
registers, 4 fp32 accumulators, a metadata register) and a sparsity selector, rebuilds the dense
16x32 ``A`` and 32x8 ``B`` through the fragment maps of
:mod:`tvm_sparse.kernels.gpu.mma_sp_layout` (the PTX ISA's), and returns every thread's ``D``.
Metadata the ISA leaves undefined (positions of a group not increasing) raises, as does a
compressed element that no metadata field or several fields describe.

Importing this module registers :data:`~tvm_sparse.kernels.gpu.mma_sp_matmul.EMULATED_MMA_SP`,
so a kernel built with ``mma="emulated"`` runs on the CPU (``cuda_testing.run_on_cpu``) with
its own loads, shared-memory staging and stores, and this model in place of the instruction.
"""

from __future__ import annotations

import itertools

import numpy as np
import tvm_ffi

from tvm_sparse.kernels.gpu.mma_sp_layout import (
    MMA_K,
    MMA_M,
    MMA_N,
    REGS,
    a_element,
    b_element,
    c_element,
    meta_element,
    meta_holder,
    meta_slot,
)
from tvm_sparse.kernels.gpu.mma_sp_matmul import EMULATED_MMA_SP

#: The six ways to keep 2 of 4.
PAIRS = list(itertools.combinations(range(4), 2))


def two_four(n: int, k: int, rng: np.random.Generator, *, sparse_groups: bool = True):
    """A random fp16 ``(n, k)`` weight pruned 2:4 with every one of the six pairs present
    (where there are six groups), and, with ``sparse_groups``, some groups of 1 or 0 nonzeros."""
    groups = -(-k // 4)
    pick = rng.integers(len(PAIRS), size=(n, groups))
    pick.flat[: min(6, pick.size)] = np.arange(min(6, pick.size))
    mask = np.zeros((n, groups, 4), bool)
    for p, (i, j) in enumerate(PAIRS):
        mask[pick == p, i] = True
        mask[pick == p, j] = True
    values = rng.uniform(0.5, 2.0, mask.shape) * rng.choice([-1, 1], mask.shape)
    weight = (values * mask).reshape(n, -1)[:, :k]
    if sparse_groups:
        weight[rng.random(weight.shape) < 0.1] = 0
    return weight.astype("float16")


_LANE, _REG, _HALF = np.ix_(np.arange(32), np.arange(REGS), np.arange(2))


def _halves(regs: np.ndarray) -> np.ndarray:
    """``(32, 4)`` uint32 registers as ``(32, 4, 2)`` fp16, the low half first."""
    return np.ascontiguousarray(regs, dtype=np.uint32).view(np.float16).reshape(32, REGS, 2)


def _assert_bijective(rows, cols, shape, what: str) -> None:
    """Every element of the matrix is held by exactly one (thread, register, half)."""
    count = np.zeros(shape, np.int64)
    np.add.at(count, np.broadcast_arrays(rows, cols), 1)
    assert (count == 1).all(), f"the {what} fragment map does not cover each element once"


def sparse_a(a: np.ndarray, e: np.ndarray, selector: int) -> np.ndarray:
    """The dense 16x32 ``A`` a warp's ``A`` registers and metadata describe."""
    kept = np.zeros((MMA_M, MMA_K // 2), np.float16)
    row, col = a_element(_LANE, _REG, _HALF)
    kept[row, col] = _halves(a)
    _assert_bijective(row, col, kept.shape, "A")
    position = np.full((MMA_M, MMA_K // 2), -1)
    for lane in range(32):
        if not meta_holder(lane, selector):
            continue
        for field in range(16):
            r, c = meta_element(meta_slot(lane), field)
            if position[r, c] != -1:
                raise AssertionError(f"element {(r, c)} has two metadata fields")
            position[r, c] = (int(e[lane]) >> (2 * field)) & 3
    if (position == -1).any():
        raise AssertionError("the holding threads leave elements of A without metadata")
    first, second = position[:, 0::2], position[:, 1::2]
    if (first >= second).any():
        r, g = np.argwhere(first >= second)[0]
        raise ValueError(
            f"metadata of row {r}, group {g} is ({first[r, g]}, {second[r, g]}): the ISA "
            "defines only two increasing positions"
        )
    dense = np.zeros((MMA_M, MMA_K), np.float16)
    rows = np.arange(MMA_M)[:, None]
    dense[rows, np.arange(MMA_K // 2)[None, :] // 2 * 4 + position] = kept
    return dense


def emulate_mma_sp(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, e: np.ndarray, selector: int = 0
) -> np.ndarray:
    """``D = A @ B + C`` of one warp: ``a``, ``b`` ``(32, 4)`` uint32, ``c`` ``(32, 4)`` fp32,
    ``e`` ``(32,)`` uint32 metadata; returns ``d`` ``(32, 4)`` fp32."""
    if selector not in (0, 1):
        raise ValueError(f"m16n8k32 f16 takes sparsity selector 0 or 1, got {selector}")
    dense_b = np.zeros((MMA_K, MMA_N), np.float16)
    k, col = b_element(_LANE, _REG, _HALF)
    dense_b[k, col] = _halves(b)
    _assert_bijective(k, col, dense_b.shape, "B")
    lane, i = np.ix_(np.arange(32), np.arange(4))
    row, col = c_element(lane, i)
    dense_c = np.zeros((MMA_M, MMA_N), np.float64)
    dense_c[row, col] = c
    _assert_bijective(row, col, dense_c.shape, "C")
    d = sparse_a(a, e, selector).astype(np.float64) @ dense_b.astype(np.float64) + dense_c
    return d[row, col].astype(np.float32)


@tvm_ffi.register_global_func(EMULATED_MMA_SP, override=True)
def _mma_sp_warp(fa, fb, fe, acc, warp) -> None:
    """Every ``mma.sp`` of warp ``warp`` of an ``mma="emulated"`` kernel, on its buffers."""
    a, b, e, out = fa.numpy(), fb.numpy(), fe.numpy(), acc.numpy()
    w = int(warp)
    for i in range(a.shape[2]):
        for j in range(b.shape[2]):
            out[w, :, i, j] = emulate_mma_sp(a[w, :, i], b[w, :, j], out[w, :, i, j], e[w, :, i])
    acc.copyfrom(out)


__all__ = ["PAIRS", "emulate_mma_sp", "sparse_a", "two_four"]
