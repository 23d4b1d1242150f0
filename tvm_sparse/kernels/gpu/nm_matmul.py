"""N:M sparse weight (at most N nonzeros in every M consecutive inputs) times activations on
CUDA GPUs, fp32, from compressed weights.

``W`` is stored as :func:`~tvm_sparse.kernels.to_nm` compresses it: ``values`` ``(N_out,
K / M * N)``, every row with the same count, and per value its column. The kernel reads the
column as an ``int8`` offset inside its group of ``M`` (:func:`nm_group_offsets`): the group
itself follows from the value's position, so a kept fp32 weight costs 5 bytes instead of 8
(2:4 moves 10 bytes per 4 weights where dense moves 16; with ``int32`` columns it would be 16).

Algorithm
---------
The tiling of :mod:`~tvm_sparse.kernels.gpu.bsr_matmul`, with a row unit of
``rows_per_thread`` output rows: a CTA stages ``(m_tile, k_tile)`` slices of ``X`` in shared
memory (``k_tile`` a multiple of ``M``); since every row keeps exactly ``k_tile / M * N``
values per slice, the loop over them has a static trip count and needs no ``indptr``. Each
value is one shared load and one FMA per row of ``X`` the thread owns.

Sparse tensor cores
-------------------
Ampere's sparse tensor-core instruction ``mma.sp`` skips the zeros in hardware, but PTX defines
it only for ``f16`` / ``bf16`` / ``tf32`` / 8-bit float and integer multiplicands: there is no
fp32 ``mma.sp``. ``tf32`` would round the fp32 operands to a 10-bit mantissa, outside the fp32
tolerances this project keeps, so fp32 models run this CUDA-core kernel; fp16 2:4 weights on
sm_80+ run :mod:`.mma_sp_matmul` (TVM 0.27's ``T.ptx.mma.sp`` table entry, no TIR schedule or
tensor intrinsic emits it).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from tvm import tirx
from tvm.script import tirx as T

from ..formats import NMMatrix
from ..kernel_cache import cached_kernel
from ..nm_matmul import nm_matmul_kernel_name
from .tiling import CUDATileKnobs, load_x_tile

__all__ = ["cuda_nm_matmul", "nm_group_offsets"]

#: Output rows per thread when the knobs leave it open.
_ROWS_PER_THREAD = 4


def nm_group_offsets(mat: NMMatrix) -> np.ndarray:
    """The ``int8`` offset of each kept value inside its group of ``M`` inputs.

    Value ``e`` of a row lies in group ``e // N``, so its column is
    ``(e // N) * M + offset``.
    """
    keep, group = mat.nm
    if group > 127:
        raise ValueError(f"N:M groups of M={group} > 127 do not fit int8 offsets")
    expected = (np.arange(mat.columns.shape[1]) // keep) * group
    if np.any(mat.columns // group * group != expected[None, :]):
        raise ValueError("columns are not stored group by group, as to_nm stores them")
    return np.ascontiguousarray((mat.columns % group).astype(np.int8))


@cached_kernel
def cuda_nm_matmul(
    m: int,
    k: int,
    n: int,
    nm: tuple[int, int],
    rows: int,
    *,
    knobs: CUDATileKnobs | None = None,
    dtype: str = "float32",
) -> tirx.PrimFunc:
    """A scheduled CUDA PrimFunc for ``Y = X @ W.T`` with ``W`` in N:M form.

    Parameters
    ----------
    m, k, n : int
        ``X`` ``(m, k)``, ``W`` ``(n, k)``, ``Y`` ``(m, n)``.
    nm : tuple[int, int]
        ``(N, M)``.
    rows : int
        Rows of the stored ``values`` (at least ``n``).
    knobs : CUDATileKnobs, optional
        Thread tiling; resolved for this shape.
    dtype : str
        Element type.

    Returns
    -------
    tvm.tirx.PrimFunc
        Parameters ``(x, values, offsets, y)``: ``x`` ``(1, m, k)``, ``values`` ``(rows,
        K_pad / M * N)``, ``offsets`` of the same shape from :func:`nm_group_offsets`,
        ``y`` ``(1, m, n)``.
    """
    keep, group = nm
    if not 0 < keep <= group or rows < n:
        raise ValueError(f"need 0 < N <= M and rows >= n, got nm={nm}, rows={rows}, n={n}")
    knobs = knobs or CUDATileKnobs()
    rn = knobs.rows_per_thread or _ROWS_PER_THREAD
    knobs = replace(knobs, rows_per_thread=rn).resolve(m, k, -(-n // rn), rn, group)
    tx_n, ty_n, vm, kt = knobs.threads_m, knobs.threads_n, knobs.m_per_thread, knobs.k_tile
    tm = knobs.m_tile
    k_pad = -(-k // group) * group
    per_row = k_pad // group * keep
    per_step = kt // group * keep  # kept values of a row in one k_tile
    chunks = -(-k_pad // kt)
    exact = per_row % per_step == 0
    grid_n = -(-n // (rn * ty_n))
    grid_m = -(-m // tm)
    zero = tirx.const(0, dtype)
    load = load_x_tile(knobs, m, k, "MK", dtype)

    @T.prim_func(private=True, s_tir=True)
    def kernel(
        x: T.Buffer((1, m, k), dtype),
        values: T.Buffer((rows, per_row), dtype),
        offsets: T.Buffer((rows, per_row), "int8"),
        y: T.Buffer((1, m, n), dtype),
    ):
        T.func_attr({"tirx.noalias": True})
        xs = T.sblock_alloc_buffer((tm, kt + 1), dtype, scope="shared")
        acc = T.sblock_alloc_buffer((ty_n, tx_n, vm, rn), dtype, scope="local")
        wv = T.sblock_alloc_buffer((ty_n, tx_n, rn), dtype, scope="local")
        col = T.sblock_alloc_buffer((ty_n, tx_n, rn), "int32", scope="local")
        for bn in T.thread_binding(grid_n, thread="blockIdx.x"):
            for bm in T.thread_binding(grid_m, thread="blockIdx.y"):
                for ty in T.thread_binding(ty_n, thread="threadIdx.y"):
                    for tx in T.thread_binding(tx_n, thread="threadIdx.x"):
                        for mi in T.unroll(vm):
                            for g in T.unroll(rn):
                                acc[ty, tx, mi, g] = zero
                for kc in range(chunks):
                    load(x, xs, 0, bm, kc)
                    for ty in T.thread_binding(ty_n, thread="threadIdx.y"):
                        for tx in T.thread_binding(tx_n, thread="threadIdx.x"):
                            for e in range(per_step):
                                if exact or kc * per_step + e < per_row:
                                    for g in T.unroll(rn):
                                        wv[ty, tx, g] = values[
                                            T.min((bn * ty_n + ty) * rn + g, rows - 1),
                                            kc * per_step + e,
                                        ]
                                        col[ty, tx, g] = e // keep * group + T.Cast(
                                            "int32",
                                            offsets[
                                                T.min((bn * ty_n + ty) * rn + g, rows - 1),
                                                kc * per_step + e,
                                            ],
                                        )
                                    for g in T.unroll(rn):
                                        for mi in T.unroll(vm):
                                            acc[ty, tx, mi, g] = (
                                                acc[ty, tx, mi, g]
                                                + wv[ty, tx, g] * xs[mi * tx_n + tx, col[ty, tx, g]]
                                            )
                for ty in T.thread_binding(ty_n, thread="threadIdx.y"):
                    for tx in T.thread_binding(tx_n, thread="threadIdx.x"):
                        for mi in T.unroll(vm):
                            for g in T.unroll(rn):
                                if bm * tm + mi * tx_n + tx < m and (bn * ty_n + ty) * rn + g < n:
                                    y[0, bm * tm + mi * tx_n + tx, (bn * ty_n + ty) * rn + g] = acc[
                                        ty, tx, mi, g
                                    ]

    return kernel.with_attrs(
        {
            "tirx.is_scheduled": True,
            "tvm_sparse.kernel": nm_matmul_kernel_name(nm),
            "tvm_sparse.knobs": {"device": "cuda", **knobs.as_attr()},
            "op_pattern": 8,
        }
    )
