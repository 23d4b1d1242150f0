"""Compressed weight formats the sparse kernels read: block-sparse rows (BSR) and N:M.

Weights are in ``(out_features, in_features)`` orientation (``(N, K)``), as
:func:`tvm_sparse.passes.detect_sparsity.analyze_weight` sees them. Shapes that a block does not
divide are zero-padded up to the block grid, never truncated; the kernels then write (or the
rewrite slices off) only the real outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BSRMatrix", "NMMatrix", "to_bsr", "to_nm"]


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class BSRMatrix:
    """A ``(N, K)`` matrix in block-sparse-row form with ``(r, c)`` blocks.

    Attributes
    ----------
    data : numpy.ndarray
        ``(nnzb, r, c)`` nonzero blocks, row-major over block rows.
    indices : numpy.ndarray
        ``(nnzb,)`` int32 block-column index of each block.
    indptr : numpy.ndarray
        ``(block_rows + 1,)`` int32 offsets of each block row into ``data``.
    shape : tuple[int, int]
        The logical ``(N, K)``, before padding.
    block : tuple[int, int]
        ``(r, c)``: rows of out, columns of in.
    """

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    shape: tuple[int, int]
    block: tuple[int, int]

    @property
    def nnzb(self) -> int:
        return int(self.data.shape[0])

    @property
    def block_rows(self) -> int:
        return int(self.indptr.shape[0] - 1)

    @property
    def padded_shape(self) -> tuple[int, int]:
        """``(N, K)`` rounded up to the block grid (``N`` also to the row group, see to_bsr)."""
        r, c = self.block
        return self.block_rows * r, round_up(self.shape[1], c)

    @property
    def stored_density(self) -> float:
        """Stored values (explicit zeros inside kept blocks included) over ``N * K``."""
        n, k = self.shape
        return self.data.size / (n * k) if n * k else 0.0

    def data_cr(self) -> np.ndarray:
        """``data`` with each block transposed to ``(nnzb, c, r)``: the vectorised-over-rows
        kernel loads ``r`` consecutive outputs of one input column as one vector."""
        return np.ascontiguousarray(self.data.transpose(0, 2, 1))

    def to_dense(self) -> np.ndarray:
        r, c = self.block
        n_pad, k_pad = self.padded_shape
        dense = np.zeros((n_pad, k_pad), dtype=self.data.dtype)
        for i in range(self.block_rows):
            for j in range(self.indptr[i], self.indptr[i + 1]):
                col = int(self.indices[j]) * c
                dense[i * r : (i + 1) * r, col : col + c] = self.data[j]
        return dense[: self.shape[0], : self.shape[1]]


def to_bsr(
    weight: np.ndarray, block: tuple[int, int], *, row_multiple: int = 1, nonempty: bool = False
) -> BSRMatrix:
    """Compress a dense ``(N, K)`` weight into BSR, keeping every block holding a nonzero.

    Parameters
    ----------
    weight : numpy.ndarray
        2-D ``(N, K)`` weight; zeros are the pruned entries.
    block : tuple[int, int]
        ``(r, c)`` block shape.
    row_multiple : int
        Pad the number of block rows to a multiple of this (empty rows), so a kernel that writes
        groups of block rows at a time needs no tail.
    nonempty : bool
        Store one explicit zero block for an all-zero weight, so that no buffer a kernel takes
        is empty.

    Returns
    -------
    BSRMatrix
    """
    weight = np.asarray(weight)
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {weight.shape}")
    r, c = int(block[0]), int(block[1])
    if r < 1 or c < 1 or row_multiple < 1:
        raise ValueError(f"block must be positive (rows, cols), got {block}")
    n, k = weight.shape
    block_rows = round_up(max(-(-n // r), 1), row_multiple)
    block_cols = -(-k // c)
    padded = np.zeros((block_rows * r, block_cols * c), dtype=weight.dtype)
    padded[:n, :k] = weight
    grid = padded.reshape(block_rows, r, block_cols, c).transpose(0, 2, 1, 3)
    keep = (grid != 0).any(axis=(2, 3))
    if nonempty and not keep.any():
        keep[0, 0] = True
    rows, cols = np.nonzero(keep)  # row-major: block rows in order
    indptr = np.zeros(block_rows + 1, dtype="int32")
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    data = np.ascontiguousarray(grid[rows, cols])
    return BSRMatrix(
        data=data.reshape(-1, r, c),
        indices=cols.astype("int32"),
        indptr=indptr,
        shape=(n, k),
        block=(r, c),
    )


@dataclass(frozen=True)
class NMMatrix:
    """A ``(N, K)`` matrix with at most ``n`` nonzeros in every ``m`` consecutive inputs of a row.

    Attributes
    ----------
    values : numpy.ndarray
        ``(N, groups * n)`` kept values; a group with fewer than ``n`` nonzeros stores zeros.
    columns : numpy.ndarray
        ``(N, groups * n)`` int32 absolute input column of each kept value (within ``K`` padded
        to a multiple of ``m``).
    shape : tuple[int, int]
        The logical ``(N, K)``.
    nm : tuple[int, int]
        ``(n, m)``.
    """

    values: np.ndarray
    columns: np.ndarray
    shape: tuple[int, int]
    nm: tuple[int, int]

    @property
    def padded_k(self) -> int:
        return round_up(self.shape[1], self.nm[1])

    def to_dense(self) -> np.ndarray:
        dense = np.zeros((self.values.shape[0], self.padded_k), dtype=self.values.dtype)
        rows = np.arange(self.values.shape[0])[:, None]
        np.add.at(dense, (rows, self.columns), self.values)
        return dense[: self.shape[0], : self.shape[1]]


def to_nm(weight: np.ndarray, nm: tuple[int, int], *, row_multiple: int = 1) -> NMMatrix:
    """Compress a dense ``(N, K)`` weight that conforms to ``n:m`` sparsity.

    Parameters
    ----------
    weight : numpy.ndarray
        2-D ``(N, K)`` weight.
    nm : tuple[int, int]
        ``(n, m)``; every group of ``m`` consecutive inputs of a row holds at most ``n`` nonzeros.
    row_multiple : int
        Pad the rows (with zero rows) to a multiple of this.

    Returns
    -------
    NMMatrix

    Raises
    ------
    ValueError
        When a group holds more than ``n`` nonzeros.
    """
    weight = np.asarray(weight)
    n_keep, m = int(nm[0]), int(nm[1])
    if weight.ndim != 2 or not 0 < n_keep <= m:
        raise ValueError(f"need a 2-D weight and 0 < n <= m, got {weight.shape} and nm={nm}")
    rows, k = weight.shape
    rows_pad = round_up(max(rows, 1), row_multiple)
    k_pad = round_up(k, m)
    padded = np.zeros((rows_pad, k_pad), dtype=weight.dtype)
    padded[:rows, :k] = weight
    groups = padded.reshape(rows_pad, k_pad // m, m)
    if ((groups != 0).sum(axis=2) > n_keep).any():
        raise ValueError(f"weight does not conform to {n_keep}:{m} sparsity")
    # Stable sort puts nonzeros first, keeping their column order; zeros fill short groups.
    order = np.argsort(groups == 0, axis=2, kind="stable")[:, :, :n_keep]
    values = np.take_along_axis(groups, order, axis=2)
    columns = order + (np.arange(k_pad // m) * m)[None, :, None]
    return NMMatrix(
        values=np.ascontiguousarray(values.reshape(rows_pad, -1)),
        columns=np.ascontiguousarray(columns.reshape(rows_pad, -1).astype("int32")),
        shape=(rows, k),
        nm=(n_keep, m),
    )
