"""2:4 fp16 weights compressed, at compile time, into the registers ``mma.sp`` takes.

:func:`to_mma_sp` lays a pruned ``(N, K)`` weight out so that the kernel of
:mod:`.mma_sp_matmul` loads each thread's ``A`` fragment with one 16-byte read and its metadata
with one 4-byte read: values in fragment order (:func:`.mma_sp_layout.a_element`), metadata
words in the order :func:`.mma_sp_layout.meta_slot` reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .mma_sp_layout import META_REGS, MMA_K, MMA_M, REGS, a_element, meta_element

__all__ = ["MMASpWeight", "to_mma_sp"]

_LANES = 32


@dataclass(frozen=True)
class MMASpWeight:
    """A 2:4 ``(N, K)`` fp16 weight as ``mma.sp`` ``m16n8k32`` ``A`` tiles.

    Attributes
    ----------
    values : numpy.ndarray
        ``(ceil(N / 16), ceil(K / 32), 32, 4)`` uint32: per 16x32 tile, each lane's four ``A``
        registers (two fp16 kept values each, the lower column in the low half).
    metadata : numpy.ndarray
        ``(ceil(N / 16), ceil(K / 32), 16)`` uint32: per tile, the word of each thread pair.
    shape : tuple[int, int]
        The logical ``(N, K)``; rows and columns past it are zero.
    """

    values: np.ndarray
    metadata: np.ndarray
    shape: tuple[int, int]

    @property
    def tiles(self) -> tuple[int, int]:
        """``(tiles along N, mma steps along K)``."""
        return int(self.values.shape[0]), int(self.values.shape[1])

    def to_dense(self) -> np.ndarray:
        """The fp16 ``(N, K)`` weight these registers encode (decoded through the maps)."""
        kept = self._compressed(self.values.view(np.float16).reshape(*self.values.shape, 2))
        position = self._positions()
        tn, ts = self.tiles
        dense = np.zeros((tn * MMA_M, ts * MMA_K), np.float16)
        rows = np.arange(tn * MMA_M)[:, None]
        cols = np.arange(ts * MMA_K // 2)[None, :]
        dense[rows, cols // 2 * 4 + position] = kept
        return dense[: self.shape[0], : self.shape[1]]

    def _compressed(self, halves: np.ndarray) -> np.ndarray:
        """``(N_pad, K_pad / 2)`` kept values from ``(tiles, steps, lane, reg, half)``."""
        tn, ts = self.tiles
        out = np.zeros((tn * MMA_M, ts * MMA_K // 2), halves.dtype)
        lane, reg, half = np.ix_(np.arange(_LANES), np.arange(REGS), np.arange(2))
        row, col = a_element(lane, reg, half)
        for t in range(tn):
            for s in range(ts):
                out[t * MMA_M + row, s * MMA_K // 2 + col] = halves[t, s]
        return out

    def _positions(self) -> np.ndarray:
        """``(N_pad, K_pad / 2)`` position (0-3) of each kept value inside its group."""
        tn, ts = self.tiles
        out = np.zeros((tn * MMA_M, ts * MMA_K // 2), np.int64)
        slot, field = np.ix_(np.arange(META_REGS), np.arange(16))
        row, col = meta_element(slot, field)
        fields = (self.metadata[..., None] >> (2 * field).astype(np.uint32)) & 3
        for t in range(tn):
            for s in range(ts):
                out[t * MMA_M + row, s * MMA_K // 2 + col] = fields[t, s]
        return out


def to_mma_sp(weight: np.ndarray) -> MMASpWeight:
    """Compress a 2:4-sparse ``(N, K)`` weight (at most 2 nonzeros in every 4 consecutive
    inputs of a row) into :class:`MMASpWeight`.

    A group with fewer than two nonzeros keeps zeros at its lowest free positions, so that every
    metadata pair names two distinct, increasing positions, as the ISA requires.

    Raises
    ------
    ValueError
        When ``weight`` is not 2-D or a group holds more than two nonzeros.
    """
    weight = np.asarray(weight)
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {weight.shape}")
    n, k = weight.shape
    tn, ts = max(-(-n // MMA_M), 1), max(-(-k // MMA_K), 1)
    padded = np.zeros((tn * MMA_M, ts * MMA_K), np.float16)
    padded[:n, :k] = weight
    groups = padded.reshape(tn * MMA_M, -1, 4)
    counts = (groups != 0).sum(axis=2)  # padding adds no nonzeros
    if (counts > 2).any():
        row, group = np.argwhere(counts > 2)[0]
        raise ValueError(
            f"weight is not 2:4 sparse: row {row}, inputs {4 * group}-{4 * group + 3} hold "
            f"{counts[row, group]} nonzeros; prune it 2:4 along the inputs or use another kernel"
        )
    # nonzeros first, then the free positions; the first two, in increasing order
    key = (groups == 0) * 4 + np.arange(4)
    position = np.sort(np.argsort(key, axis=2, kind="stable")[:, :, :2], axis=2)
    kept = np.take_along_axis(groups, position, axis=2).reshape(tn * MMA_M, -1)
    position = position.reshape(tn * MMA_M, -1)

    lane, reg, half = np.ix_(np.arange(_LANES), np.arange(REGS), np.arange(2))
    a_row, a_col = a_element(lane, reg, half)
    slot, field = np.ix_(np.arange(META_REGS), np.arange(16))
    m_row, m_col = meta_element(slot, field)
    values = np.empty((tn, ts, _LANES, REGS, 2), np.float16)
    metadata = np.empty((tn, ts, META_REGS), np.uint32)
    shifts = (2 * field).astype(np.uint32)
    for t in range(tn):
        rows, cols = slice(t * MMA_M, (t + 1) * MMA_M), position.shape[1] // ts
        for s in range(ts):
            tile_kept = kept[rows, s * cols : (s + 1) * cols]
            tile_pos = position[rows, s * cols : (s + 1) * cols].astype(np.uint32)
            values[t, s] = tile_kept[a_row, a_col]
            metadata[t, s] = (tile_pos[m_row, m_col] << shifts).sum(axis=1, dtype=np.uint32)
    return MMASpWeight(
        values=np.ascontiguousarray(values).view(np.uint32).reshape(tn, ts, _LANES, REGS),
        metadata=metadata,
        shape=(n, k),
    )
