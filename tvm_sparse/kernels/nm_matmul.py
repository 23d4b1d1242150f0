"""N:M sparse weight (at most N nonzeros per M consecutive inputs) times dense activations, on
NEON, and on x86 where :mod:`.nm_permute` does not apply (inputs not in whole groups, groups
of another size).

``Y = X @ W.T`` with ``W`` held as ``values`` and absolute ``columns`` of an
:class:`NMMatrix` (``N * K / M`` of each per output row, so every row keeps the same number of
values in every k tile and the loops need no ``indptr``), laid out by
:func:`nm_matmul_weights` in the order a task reads them. Vectorised over ``M`` (the rows of
``X``) like the ``"m"`` BSR variant: ``X`` is transposed inside the kernel, and each task of
``group`` output rows walks k tiles of ``X.T`` that stay in L1 while all its rows read them (one
vector load per kept weight and register row), its accumulators kept in memory between tiles.

Each FMA needs its own load of ``X.T``, so the kernel is bound by loads, not FMAs: 2:4 halves
the FMAs but cannot run them at the dense GEMM's rate; whether it wins is measured per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from tvm import tirx
from tvm.script import tirx as T
from tvm.target import Target

from ..targets.facts import is_neon, num_cores, vector_lanes
from .epilogue import EPILOGUE_ATTR, PLAIN, Epilogue
from .formats import NMMatrix
from .kernel_cache import cached_kernel

__all__ = ["NMMatmulKnobs", "nm_matmul", "nm_matmul_kernel_name", "nm_matmul_weights"]


#: Bytes of ``X.T`` one k tile may hold, and its most inputs: the tile's rows of ``X.T`` stay
#: in L1 while every row of the task reads them; longer tiles saved little on the accumulators'
#: loads and stores between tiles and lost L1 hits.
_XT_TILE_BYTES = 32 * 1024
_K_TILE_MAX = 64
#: NEON's register tile. Each kept weight's FMAs need their own vector loads of ``X.T`` beside
#: the weight's value and column loads: ``v`` vectors make ``v + 2`` loads for ``v`` FMAs, and
#: the Cortex-A72 issues one 128-bit load and one FMA a cycle, the Neoverse-N1 / A76 two of
#: each, so the loads bound the loop at ``v / (v + 2)`` of the FMA peak: 80% with x86's 8
#: vectors, 89% with 16 (NEON's 32 registers hold 16 accumulators beside the loads). Two
#: weights per iteration load their values as a pair and issue their column loads ahead of the
#: activation loads that wait for them; with four, LLVM's SLP vectoriser computes the four
#: column addresses in a vector register and moves them out lane by lane, on the FMA pipes.
_NEON_KNOBS = {"m_vectors": 16, "unroll": 2}


@dataclass(frozen=True)
class NMMatmulKnobs:
    """Tuning knobs of the N:M matmul.

    Parameters
    ----------
    lanes : int
        Fp32 lanes of one vector register.
    m_tile : int
        Rows of ``X`` per register tile (0: ``m_vectors * lanes``).
    group : int
        Output rows per task (0: ``4 * lanes``, fewer for a narrow weight): they share each
        k tile of ``X.T`` while it is in L1.
    k_tile : int
        Inputs per k tile, a multiple of ``M`` (0: up to 64, as many as keep ``m_tile`` columns
        of ``X.T`` within 32 KiB).
    cores : int
        Cores the kernel runs on: the default ``group`` leaves at least four tasks per core.
    unroll : int
        Kept weights per iteration of the loop over a row's weights in a k tile.
    m_vectors : int
        Vectors of ``X`` per register tile when ``m_tile`` is 0.
    """

    lanes: int = 16
    m_tile: int = 0
    group: int = 0
    k_tile: int = 0
    cores: int = 1
    unroll: int = 1
    m_vectors: int = 8

    def __post_init__(self) -> None:
        if self.unroll < 1 or self.m_vectors < 1:
            raise ValueError(f"unroll and m_vectors must be positive, got {self}")

    @classmethod
    def for_target(cls, target: Target, **overrides) -> NMMatmulKnobs:
        """Defaults for ``target``: its vector width and cores; NEON gets its own register
        tile (:data:`_NEON_KNOBS`)."""
        defaults = dict(_NEON_KNOBS) if is_neon(target) else {}
        return cls(lanes=vector_lanes(target), cores=num_cores(target), **{**defaults, **overrides})

    def resolve(self, m: int, n: int = 0, nm: tuple[int, int] = (2, 4)) -> NMMatmulKnobs:
        m_pad = padded_rows(m, self.lanes)
        m_tile = max(min(self.m_tile or self.m_vectors * self.lanes, m_pad), 1)
        group = self.group
        if not group:
            group = min(4 * self.lanes, -(-max(n, 1) // self.lanes) * self.lanes)
            # enough tasks for every core (a narrow weight: ViT's 192 outputs made 3 tasks)
            m_tiles = -(-m_pad // m_tile)
            while group > self.lanes and -(-max(n, 1) // group) * m_tiles < 4 * self.cores:
                group = max(group // 2 // self.lanes, 1) * self.lanes
        fit = min(_XT_TILE_BYTES // (4 * m_tile), _K_TILE_MAX)
        k_tile = self.k_tile or max(fit // nm[1], 1) * nm[1]
        return replace(self, m_tile=m_tile, group=group, k_tile=k_tile)


def nm_matmul_weights(mat: NMMatrix, knobs: NMMatmulKnobs) -> tuple[np.ndarray, np.ndarray]:
    """``values`` and ``columns`` ``(tasks, k_tiles, group, per_tile)`` of an N:M weight for
    resolved ``knobs``: each task's weights in one stream, k tile by k tile (row by row, a
    task's rows started a hardware prefetch stream each). The last k tile is padded with zero
    values of column 0."""
    rows, per_row = mat.values.shape
    if rows % knobs.group or knobs.k_tile % mat.nm[1]:
        raise ValueError(f"{rows} rows and k_tile {knobs.k_tile} do not fit knobs {knobs}")
    per_tile = knobs.k_tile // mat.nm[1] * mat.nm[0]
    k_tiles = -(-per_row // per_tile)
    shape = (rows // knobs.group, knobs.group, k_tiles, per_tile)

    def tiled(a: np.ndarray) -> np.ndarray:
        padded = np.zeros((rows, k_tiles * per_tile), a.dtype)
        padded[:, :per_row] = a
        return np.ascontiguousarray(padded.reshape(shape).transpose(0, 2, 1, 3))

    return tiled(mat.values), tiled(mat.columns.astype("int32"))


def padded_rows(m: int, lanes: int) -> int:
    """Rows of ``X.T`` the kernel computes: ``m`` up to whole vectors (beyond one vector), so
    that no tile ends in a part of a register (ViT's 197 rows ran a 69-lane tail tile)."""
    return m if m <= lanes else -(-m // lanes) * lanes


def nm_matmul_kernel_name(nm: tuple[int, int]) -> str:
    return f"nm_matmul[{nm[0]}:{nm[1]}]"


@cached_kernel
def nm_matmul(
    m: int,
    k: int,
    n: int,
    nm: tuple[int, int],
    rows: int,
    *,
    knobs: NMMatmulKnobs,
    dtype: str = "float32",
    epilogue: Epilogue = PLAIN,
) -> tirx.PrimFunc:
    """A scheduled PrimFunc for ``Y = X @ W.T`` with ``W`` in N:M form.

    Parameters
    ----------
    m, k, n : int
        ``X`` ``(m, k)``, ``W`` ``(n, k)``, ``Y`` ``(m, n)``.
    nm : tuple[int, int]
        ``(N, M)``.
    rows : int
        Rows of the weight as stored (``n`` rounded up to ``knobs.group``).
    knobs : NMMatmulKnobs
        Register tiling.
    dtype : str
        Element type.
    epilogue : Epilogue
        Bias add and activation applied to every output as it is stored.

    Returns
    -------
    tvm.tirx.PrimFunc
        Parameters ``(x, values, columns, y)`` (the weight as :func:`nm_matmul_weights` lays it
        out for the same knobs, resolved), with ``bias`` ``(n,)`` before ``y`` when the epilogue
        adds one.
    """
    keep, group_m = nm
    knobs = knobs.resolve(m, n, nm)
    k_pad = -(-k // group_m) * group_m
    per_row = k_pad // group_m * keep
    mt, group, unroll = knobs.m_tile, knobs.group, knobs.unroll
    if rows % group or rows < n:
        raise ValueError(f"rows {rows} must cover n={n} and be a multiple of group {group}")
    if knobs.k_tile % group_m:
        raise ValueError(f"k_tile {knobs.k_tile} must be a multiple of M={group_m}")
    m_pad = padded_rows(m, knobs.lanes)
    m_full, m_tail = m_pad // mt, m_pad % mt
    m_tiles = m_full + (m_tail > 0)
    tasks = -(-n // group)
    full_tasks = n // group
    n_tail = n - full_tasks * group
    # Every row keeps the same number of values per k tile: the tiles need no index pointers.
    per_tile = knobs.k_tile // group_m * keep
    k_tiles_w = -(-per_row // per_tile)
    zero = tirx.const(0, dtype)
    # vectors of one register each, unrolled: LLVM splits a vector of 5 registers into odd
    # pieces and shuffles
    lanes = knobs.lanes
    vl_full = lanes if mt % lanes == 0 else mt
    vl_tail = lanes if m_tail % lanes == 0 else max(m_tail, 1)
    tk = 16
    k_tiles = -(-k_pad // tk)

    @T.macro
    def weight_fma(xt, values, columns, acc, t, kt, g, m0, w, vl, e):
        for mv in T.unroll(w // vl):
            for ml in T.vectorized(vl):
                acc[mv * vl + ml] = (
                    acc[mv * vl + ml]
                    + values[t, kt, g, e] * xt[columns[t, kt, g, e], m0 + mv * vl + ml]
                )

    @T.macro
    def k_tile(xt, values, columns, acc_rows, t, kt, m0, w, vl):
        for g in range(group):
            acc = T.alloc_buffer((w,), dtype)
            for mv in T.unroll(w // vl):
                for ml in T.vectorized(vl):
                    acc[mv * vl + ml] = acc_rows[g, mv * vl + ml]
            if unroll == 1:
                for e in range(per_tile):
                    weight_fma(xt, values, columns, acc, t, kt, g, m0, w, vl, e)
            else:
                # ``unroll`` kept weights per iteration: their column loads and address
                # arithmetic issue together ahead of the activation loads
                for eo in range(per_tile // unroll):
                    for eu in T.unroll(unroll):
                        e = eo * unroll + eu
                        weight_fma(xt, values, columns, acc, t, kt, g, m0, w, vl, e)
                if per_tile % unroll > 0:
                    for et in range(per_tile % unroll):
                        e = per_tile // unroll * unroll + et
                        weight_fma(xt, values, columns, acc, t, kt, g, m0, w, vl, e)
            for mv in T.unroll(w // vl):
                for ml in T.vectorized(vl):
                    acc_rows[g, mv * vl + ml] = acc[mv * vl + ml]

    @T.macro
    def tile(xt, values, columns, bias, y, t, m0, w, vl):
        # The task's accumulators live in memory between k tiles; within a tile each row's
        # stay in registers while the tile's columns of X.T stay in L1 for all its rows.
        acc_rows = T.alloc_buffer((group, w), dtype)
        for g, mi in T.grid(group, w):
            acc_rows[g, mi] = zero
        for kt in range(k_tiles_w):
            k_tile(xt, values, columns, acc_rows, t, kt, m0, w, vl)
        for mi in range(w):
            if m0 + mi < m:
                if t < full_tasks:
                    for gg in T.vectorized(group):
                        y[m0 + mi, t * group + gg] = epilogue.apply(
                            acc_rows[gg, mi], bias, t * group + gg
                        )
                else:
                    for gg in range(n_tail):
                        y[m0 + mi, t * group + gg] = epilogue.apply(
                            acc_rows[gg, mi], bias, t * group + gg
                        )

    @T.macro
    def body(x, values, columns, bias, y):
        xt = T.alloc_buffer((k_pad, m_pad), dtype)
        for ko in T.parallel(k_tiles):
            for mm in range(m_pad):
                for kk in T.unroll(tk):
                    if ko * tk + kk < k_pad:
                        xt[ko * tk + kk, mm] = T.if_then_else(
                            ko * tk + kk < k and mm < m,
                            x[T.min(mm, m - 1), T.min(ko * tk + kk, k - 1)],
                            zero,
                        )
        for p in T.parallel(tasks * m_tiles):
            if m_tail == 0:
                tile(xt, values, columns, bias, y, p // m_tiles, p % m_tiles * mt, mt, vl_full)
            elif p % m_tiles < m_full:
                tile(xt, values, columns, bias, y, p // m_tiles, p % m_tiles * mt, mt, vl_full)
            else:
                tile(xt, values, columns, bias, y, p // m_tiles, m_full * mt, m_tail, vl_tail)

    w_shape = (rows // group, k_tiles_w, group, per_tile)
    if epilogue.bias:

        @T.prim_func(private=True)
        def kernel(
            x: T.Buffer((m, k), dtype),
            values: T.Buffer(w_shape, dtype),
            columns: T.Buffer(w_shape, "int32"),
            bias: T.Buffer((n,), dtype),
            y: T.Buffer((m, n), dtype),
        ):
            T.func_attr({"tirx.noalias": True})
            body(x, values, columns, bias, y)

    else:

        @T.prim_func(private=True)
        def kernel(
            x: T.Buffer((m, k), dtype),
            values: T.Buffer(w_shape, dtype),
            columns: T.Buffer(w_shape, "int32"),
            y: T.Buffer((m, n), dtype),
        ):
            T.func_attr({"tirx.noalias": True})
            body(x, values, columns, None, y)

    return kernel.with_attrs(
        {
            "tirx.is_scheduled": True,
            "tvm_sparse.kernel": nm_matmul_kernel_name(nm),
            "tvm_sparse.knobs": {
                "lanes": knobs.lanes,
                "m_tile": mt,
                "group": group,
                "k_tile": knobs.k_tile,
                "unroll": knobs.unroll,
            },
            "op_pattern": 8,
            **({EPILOGUE_ATTR: epilogue.attr} if epilogue else {}),
        }
    )
