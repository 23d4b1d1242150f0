"""Thread tiling shared by the CUDA sparse kernels, and the activation tile they stage.

Both kernels compute ``Y = X @ W.T`` with one CUDA thread block (CTA) per tile of
``threads_m * m_per_thread`` rows of ``X`` and ``threads_n`` *row units* of ``W`` (a block row of
a BSR weight, or ``rows_per_thread`` rows of an N:M weight). The CTA walks ``K`` in steps of
``k_tile``: all its threads copy the ``(rows, k_tile)`` slice of ``X`` into shared memory with
coalesced loads, then each thread multiplies the stored weights of its row unit that fall in the
slice with the ``m_per_thread`` rows of the slice it owns, accumulating in registers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tvm import tirx
from tvm.script import tirx as T

__all__ = ["CUDATileKnobs", "load_x_tile"]

#: Fp32 accumulators a thread keeps in registers by default (of 255 per thread).
_ACCUMULATORS = 32
#: Bytes of the shared activation tile the default ``k_tile`` aims at: small enough for several
#: CTAs per SM on Volta/Ampere (48 KiB per CTA, 64-164 KiB per SM).
_TILE_BYTES = 16 * 1024
#: Static shared memory one CTA may use on every CUDA GPU.
MAX_SHARED_BYTES = 48 * 1024


def _pow2_ceil(value: int) -> int:
    return 1 << max(value - 1, 0).bit_length()


def _pow2_floor(value: int) -> int:
    return 1 << (max(value, 1).bit_length() - 1)


@dataclass(frozen=True)
class CUDATileKnobs:
    """Tiling knobs of the CUDA sparse kernels; 0 means "pick from the shape".

    The defaults are reasoned, not measured: no GPU has calibrated them yet.

    Parameters
    ----------
    threads : int
        Threads per CTA (``threads_m * threads_n``, at most 1024).
    threads_m : int
        Threads along the rows of ``X``; 0: enough for ``M``, at most a warp, so a warp shares
        one row unit and reads its weights as a broadcast.
    m_per_thread : int
        Rows of ``X`` per thread; 0: about 32 accumulators (``32 // unit height``, 1 to 8).
    k_tile : int
        Columns of ``X`` staged per step; 0: a tile of about 16 KiB. Rounded to the block width.
    rows_per_thread : int
        N:M kernel only: output rows per thread; 0: 4.
    """

    threads: int = 128
    threads_m: int = 0
    m_per_thread: int = 0
    k_tile: int = 0
    rows_per_thread: int = 0

    def __post_init__(self) -> None:
        values = (self.threads_m, self.m_per_thread, self.k_tile, self.rows_per_thread)
        if not 1 <= self.threads <= 1024 or min(values) < 0:
            raise ValueError(f"knobs: threads in 1..1024 and the rest >= 0 (0 = default): {self}")
        if self.threads_m > self.threads:
            raise ValueError(f"knobs: threads_m {self.threads_m} > threads {self.threads}")

    def resolve(self, m: int, k: int, units: int, height: int, k_align: int) -> CUDATileKnobs:
        """Concrete knobs for ``m`` rows of ``X``, ``k`` inputs and ``units`` row units of
        ``height`` outputs each; ``k_tile`` becomes a multiple of ``k_align``."""
        vm = self.m_per_thread or max(min(_ACCUMULATORS // max(height, 1), 8), 1)
        vm = max(min(vm, m), 1)
        tx = self.threads_m or min(32, _pow2_ceil(-(-m // vm)), _pow2_floor(self.threads))
        ty = max(min(self.threads // tx, _pow2_ceil(units)), 1)
        tm = tx * vm
        k_pad = -(-k // k_align) * k_align
        kt = self.k_tile or min(max(_pow2_floor(_TILE_BYTES // (4 * tm)), 32), 512)
        kt = min(max(kt // k_align, 1) * k_align, k_pad)
        resolved = replace(self, threads=tx * ty, threads_m=tx, m_per_thread=vm, k_tile=kt)
        if resolved.shared_bytes() > MAX_SHARED_BYTES:
            raise ValueError(
                f"knobs: the activation tile ({tm} x {kt}) needs {resolved.shared_bytes()} bytes "
                f"of shared memory, more than {MAX_SHARED_BYTES}; lower m_per_thread or k_tile"
            )
        return resolved

    @property
    def threads_n(self) -> int:
        return self.threads // max(self.threads_m, 1)

    @property
    def m_tile(self) -> int:
        return self.threads_m * self.m_per_thread

    def shared_bytes(self, itemsize: int = 4) -> int:
        """Shared memory of the activation tile; its rows are padded by one element so that the
        threads of a warp, reading one column of consecutive rows, hit distinct banks."""
        return self.m_tile * (self.k_tile + 1) * itemsize

    def as_attr(self) -> dict[str, int]:
        return {
            "threads_m": self.threads_m,
            "threads_n": self.threads_n,
            "m_per_thread": self.m_per_thread,
            "k_tile": self.k_tile,
            "rows_per_thread": self.rows_per_thread,
        }


def load_x_tile(knobs: CUDATileKnobs, m: int, k: int, x_layout: str, dtype: str):
    """A macro ``(x, xs, b, bm, kc)`` copying rows ``bm * m_tile`` on and columns
    ``kc * k_tile`` on of batch item ``b`` of ``x`` into the shared tile ``xs``, zero-filled
    past ``m`` and ``k``.

    Each thread copies every ``threads``-th element of the flattened tile, walking the
    contiguous dimension of ``x`` (``K`` for ``"MK"``, ``M`` for ``"KM"``) so that a warp's
    loads coalesce. Called between two thread-bound phases; ``ThreadSync`` adds the barriers.
    """
    tx_n, ty_n = knobs.threads_m, knobs.threads_n
    tm, kt, nthreads = knobs.m_tile, knobs.k_tile, knobs.threads
    elements = tm * kt
    loads = -(-elements // nthreads)
    exact = elements % nthreads == 0
    mk = x_layout == "MK"
    inner = kt if mk else tm  # extent of the dimension contiguous in global memory
    zero = tirx.const(0, dtype)

    @T.macro
    def load(x, xs, b, bm, kc):
        for ty in T.thread_binding(ty_n, thread="threadIdx.y"):
            for tx in T.thread_binding(tx_n, thread="threadIdx.x"):
                for s in T.unroll(loads):
                    if exact or s * nthreads + ty * tx_n + tx < elements:
                        if mk:
                            xs[
                                (s * nthreads + ty * tx_n + tx) // inner,
                                (s * nthreads + ty * tx_n + tx) % inner,
                            ] = T.if_then_else(
                                bm * tm + (s * nthreads + ty * tx_n + tx) // inner < m
                                and kc * kt + (s * nthreads + ty * tx_n + tx) % inner < k,
                                x[
                                    b,
                                    T.min(
                                        bm * tm + (s * nthreads + ty * tx_n + tx) // inner, m - 1
                                    ),
                                    T.min(kc * kt + (s * nthreads + ty * tx_n + tx) % inner, k - 1),
                                ],
                                zero,
                            )
                        else:
                            xs[
                                (s * nthreads + ty * tx_n + tx) % inner,
                                (s * nthreads + ty * tx_n + tx) // inner,
                            ] = T.if_then_else(
                                bm * tm + (s * nthreads + ty * tx_n + tx) % inner < m
                                and kc * kt + (s * nthreads + ty * tx_n + tx) // inner < k,
                                x[
                                    b,
                                    T.min(
                                        kc * kt + (s * nthreads + ty * tx_n + tx) // inner, k - 1
                                    ),
                                    T.min(bm * tm + (s * nthreads + ty * tx_n + tx) % inner, m - 1),
                                ],
                                zero,
                            )

    return load
