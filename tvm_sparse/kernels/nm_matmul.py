"""N:M sparse weight (at most N nonzeros per M consecutive inputs) times dense activations.

``Y = X @ W.T`` with ``W`` held as :class:`NMMatrix`: ``values`` and absolute ``columns``,
``N * K / M`` of each per output row, so every row has the same trip count and the loop needs
no ``indptr``. Vectorised over ``M`` (the rows of ``X``) like the ``"m"`` BSR variant: ``X`` is
transposed inside the kernel, one vector load of ``X.T`` per kept weight, ``group`` output rows
collected into a tile stored as full vectors of ``Y``.

On CPUs 2:4 halves the FMAs at best while adding an index per value, so the cost model keeps it
dense on x86 unless measured otherwise; the kernel exists for correctness, the report, and
targets where it pays.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tvm import tirx
from tvm.script import tirx as T
from tvm.target import Target

from ..targets.facts import vector_lanes

__all__ = ["NMMatmulKnobs", "nm_matmul", "nm_matmul_kernel_name"]


@dataclass(frozen=True)
class NMMatmulKnobs:
    """Tuning knobs of the N:M matmul.

    Parameters
    ----------
    lanes : int
        Fp32 lanes of one vector register.
    m_tile : int
        Rows of ``X`` per register tile (0: ``8 * lanes``).
    group : int
        Output rows per store tile (0: ``lanes``).
    """

    lanes: int = 16
    m_tile: int = 0
    group: int = 0

    @classmethod
    def for_target(cls, target: Target, **overrides) -> NMMatmulKnobs:
        return cls(lanes=vector_lanes(target), **overrides)

    def resolve(self, m: int) -> NMMatmulKnobs:
        m_tile = self.m_tile or 8 * self.lanes
        return replace(self, m_tile=max(min(m_tile, m), 1), group=self.group or self.lanes)


def nm_matmul_kernel_name(nm: tuple[int, int]) -> str:
    return f"nm_matmul[{nm[0]}:{nm[1]}]"


def nm_matmul(
    m: int,
    k: int,
    n: int,
    nm: tuple[int, int],
    rows: int,
    *,
    knobs: NMMatmulKnobs,
    dtype: str = "float32",
) -> tirx.PrimFunc:
    """A scheduled PrimFunc for ``Y = X @ W.T`` with ``W`` in N:M form.

    Parameters
    ----------
    m, k, n : int
        ``X`` ``(m, k)``, ``W`` ``(n, k)``, ``Y`` ``(m, n)``.
    nm : tuple[int, int]
        ``(N, M)``.
    rows : int
        Rows of the stored ``values`` (``n`` rounded up to ``knobs.group``).
    knobs : NMMatmulKnobs
        Register tiling.
    dtype : str
        Element type.

    Returns
    -------
    tvm.tirx.PrimFunc
        Parameters ``(x, values, columns, y)``.
    """
    knobs = knobs.resolve(m)
    keep, group_m = nm
    k_pad = -(-k // group_m) * group_m
    per_row = k_pad // group_m * keep
    mt, group = knobs.m_tile, knobs.group
    if rows % group or rows < n:
        raise ValueError(f"rows {rows} must cover n={n} and be a multiple of group {group}")
    m_full, m_tail = m // mt, m % mt
    tasks = -(-n // group)
    full_tasks = n // group
    n_tail = n - full_tasks * group
    zero = tirx.const(0, dtype)
    tk = 16
    k_tiles = -(-k_pad // tk)

    @T.macro
    def tile(xt, values, columns, y, t, m0, w):
        out = T.alloc_buffer((w, group), dtype)
        for g in range(group):
            acc = T.alloc_buffer((w,), dtype)
            for mi in T.vectorized(w):
                acc[mi] = zero
            for e in range(per_row):
                for mi in T.vectorized(w):
                    acc[mi] = (
                        acc[mi] + values[t * group + g, e] * xt[columns[t * group + g, e], m0 + mi]
                    )
            for mi in T.unroll(w):
                out[mi, g] = acc[mi]
        if t < full_tasks:
            for mi in range(w):
                for gg in T.vectorized(group):
                    y[m0 + mi, t * group + gg] = out[mi, gg]
        else:
            for mi, gg in T.grid(w, n_tail):
                y[m0 + mi, t * group + gg] = out[mi, gg]

    @T.prim_func(private=True)
    def kernel(
        x: T.Buffer((m, k), dtype),
        values: T.Buffer((rows, per_row), dtype),
        columns: T.Buffer((rows, per_row), "int32"),
        y: T.Buffer((m, n), dtype),
    ):
        T.func_attr({"tirx.noalias": True})
        xt = T.alloc_buffer((k_pad, m), dtype)
        for ko in T.parallel(k_tiles):
            for mm in range(m):
                for kk in T.unroll(tk):
                    if ko * tk + kk < k_pad:
                        xt[ko * tk + kk, mm] = T.if_then_else(
                            ko * tk + kk < k, x[mm, T.min(ko * tk + kk, k - 1)], zero
                        )
        for t in T.parallel(tasks):
            for mo in range(m_full):
                tile(xt, values, columns, y, t, mo * mt, mt)
            if m_tail > 0:
                tile(xt, values, columns, y, t, m_full * mt, m_tail)

    return kernel.with_attrs(
        {
            "tirx.is_scheduled": True,
            "tvm_sparse.kernel": nm_matmul_kernel_name(nm),
            "tvm_sparse.knobs": {"lanes": knobs.lanes, "m_tile": mt, "group": group},
            "op_pattern": 8,
        }
    )
