"""Block-sparse (BSR) weight times dense activations on CUDA GPUs, fp32.

Computes ``Y = X @ W.T`` for a pruned ``(N, K)`` weight ``W`` held as the
:class:`~tvm_sparse.kernels.BSRMatrix` arrays :func:`~tvm_sparse.kernels.to_bsr` produces
(``data (nnzb, r, c)``, ``indices``, ``indptr``), for any block ``(r, c)``.

Algorithm
---------
The grid is ``(ceil(block_rows / threads_n), ceil(M / m_tile), batch)``. A CTA owns
``threads_n`` consecutive block rows and ``m_tile = threads_m * m_per_thread`` rows of ``X``;
thread ``(ty, tx)`` owns block row ``i = bx * threads_n + ty`` and rows
``tx, tx + threads_m, ...`` of the tile, with ``m_per_thread * r`` accumulators in registers.
The CTA walks ``K`` in steps of ``k_tile`` columns:

1. all threads copy the ``(m_tile, k_tile)`` slice of ``X`` into shared memory, coalesced along
   the contiguous dimension of ``X`` (see :func:`~tvm_sparse.kernels.gpu.tiling.load_x_tile`);
2. each thread advances a cursor over the nonzero blocks of its block row while their column
   lies in the slice (``indices`` are sorted within a row, so each block is visited once over
   all steps), loads the ``r`` weights of a block column into registers and multiplies them
   with its rows of the slice (one shared load feeds ``r`` FMAs).

``ThreadSync`` puts a ``__syncthreads()`` between the phases. When ``threads_m`` is a warp, the
32 threads of a warp share the block row: their cursors move together and the weight loads are
broadcasts. The output is written from registers once, guarded for the ``N`` and ``M`` tails.

``x_layout`` / ``y_layout`` ``"KM"`` / ``"NM"`` read ``X.T`` and write ``Y.T`` per batch item,
which is ``NCHW`` for a 1x1 convolution. The PrimFunc is built already scheduled
(``tirx.is_scheduled``, ``"tvm_sparse.kernel"``) in ``s_tir`` form, every phase in its own
thread-bound loops, so turning those loops serial gives the same result on a CPU.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from ..bsr_matmul import bsr_matmul_kernel_name
from ..kernel_cache import cached_kernel
from .tiling import CUDATileKnobs, load_x_tile

__all__ = ["cuda_bsr_matmul"]


@cached_kernel
def cuda_bsr_matmul(
    m: int,
    k: int,
    n: int,
    block: tuple[int, int],
    nnzb: int,
    block_rows: int,
    *,
    knobs: CUDATileKnobs | None = None,
    batch: int = 1,
    x_layout: str = "MK",
    y_layout: str = "MN",
    dtype: str = "float32",
) -> tirx.PrimFunc:
    """A scheduled CUDA PrimFunc for ``Y = X @ W.T`` with ``W`` in BSR form.

    Parameters
    ----------
    m, k, n : int
        ``X`` is ``(m, k)``, ``W`` is ``(n, k)``; ``Y`` is ``(m, n)``, per batch item.
    block : tuple[int, int]
        ``(r, c)``.
    nnzb, block_rows : int
        Size of the BSR arrays (``block_rows * r >= n``).
    knobs : CUDATileKnobs, optional
        Thread tiling; resolved for this shape.
    batch : int
        Independent ``X`` / ``Y`` pairs sharing ``W``.
    x_layout, y_layout : str
        ``"MK"`` / ``"KM"`` and ``"MN"`` / ``"NM"``: the last two dims of ``x`` and ``y``.
    dtype : str
        Element type of activations and weights.

    Returns
    -------
    tvm.tirx.PrimFunc
        Parameters ``(x, data, indices, indptr, y)``: ``x`` is ``(batch, m, k)`` or
        ``(batch, k, m)``, ``y`` is ``(batch, m, n)`` or ``(batch, n, m)``, ``data`` is
        ``(nnzb, r, c)`` as :func:`~tvm_sparse.kernels.to_bsr` stores it.
    """
    if x_layout not in ("MK", "KM") or y_layout not in ("MN", "NM"):
        raise ValueError(f"x_layout must be MK|KM and y_layout MN|NM, got {x_layout}, {y_layout}")
    r, c = block
    if block_rows * r < n or nnzb < 1:
        raise ValueError(f"BSR arrays of {block_rows} block rows, {nnzb} blocks cannot hold n={n}")
    knobs = (knobs or CUDATileKnobs()).resolve(m, k, block_rows, r, c)
    tx_n, ty_n, vm, kt = knobs.threads_m, knobs.threads_n, knobs.m_per_thread, knobs.k_tile
    tm = knobs.m_tile
    chunks = -(-(-(-k // c) * c) // kt)
    kb = kt // c  # block columns per step
    grid_n = -(-block_rows // ty_n)
    grid_m = -(-m // tm)
    x_shape = (batch, m, k) if x_layout == "MK" else (batch, k, m)
    y_mn = y_layout == "MN"
    y_shape = (batch, m, n) if y_mn else (batch, n, m)
    zero = tirx.const(0, dtype)
    load = load_x_tile(knobs, m, k, x_layout, dtype)

    @T.prim_func(private=True, s_tir=True)
    def kernel(
        x: T.Buffer(x_shape, dtype),
        data: T.Buffer((nnzb, r, c), dtype),
        indices: T.Buffer((nnzb,), "int32"),
        indptr: T.Buffer((block_rows + 1,), "int32"),
        y: T.Buffer(y_shape, dtype),
    ):
        T.func_attr({"tirx.noalias": True})
        xs = T.sblock_alloc_buffer((tm, kt + 1), dtype, scope="shared")
        # Per-thread state, indexed by the thread; CompactBufferAllocation keeps one slice
        # per thread in registers.
        acc = T.sblock_alloc_buffer((ty_n, tx_n, vm, r), dtype, scope="local")
        wv = T.sblock_alloc_buffer((ty_n, tx_n, r), dtype, scope="local")
        xv = T.sblock_alloc_buffer((ty_n, tx_n, vm), dtype, scope="local")
        pos = T.sblock_alloc_buffer((ty_n, tx_n), "int32", scope="local")
        for b in T.thread_binding(batch, thread="blockIdx.z"):
            for bn in T.thread_binding(grid_n, thread="blockIdx.x"):
                for bm in T.thread_binding(grid_m, thread="blockIdx.y"):
                    for ty in T.thread_binding(ty_n, thread="threadIdx.y"):
                        for tx in T.thread_binding(tx_n, thread="threadIdx.x"):
                            pos[ty, tx] = indptr[T.min(bn * ty_n + ty, block_rows)]
                            for mi in T.unroll(vm):
                                for rr in T.unroll(r):
                                    acc[ty, tx, mi, rr] = zero
                    for kc in range(chunks):
                        load(x, xs, b, bm, kc)
                        for ty in T.thread_binding(ty_n, thread="threadIdx.y"):
                            for tx in T.thread_binding(tx_n, thread="threadIdx.x"):
                                if bn * ty_n + ty < block_rows:
                                    while (
                                        pos[ty, tx] < indptr[bn * ty_n + ty + 1]
                                        and indices[T.min(pos[ty, tx], nnzb - 1)] < (kc + 1) * kb
                                    ):
                                        for cc in T.unroll(c):
                                            for rr in T.unroll(r):
                                                wv[ty, tx, rr] = data[pos[ty, tx], rr, cc]
                                            for mi in T.unroll(vm):
                                                xv[ty, tx, mi] = xs[
                                                    mi * tx_n + tx,
                                                    (indices[pos[ty, tx]] - kc * kb) * c + cc,
                                                ]
                                            for mi in T.unroll(vm):
                                                for rr in T.unroll(r):
                                                    acc[ty, tx, mi, rr] = (
                                                        acc[ty, tx, mi, rr]
                                                        + wv[ty, tx, rr] * xv[ty, tx, mi]
                                                    )
                                        pos[ty, tx] = pos[ty, tx] + 1
                    for ty in T.thread_binding(ty_n, thread="threadIdx.y"):
                        for tx in T.thread_binding(tx_n, thread="threadIdx.x"):
                            for mi in T.unroll(vm):
                                for rr in T.unroll(r):
                                    if (
                                        bm * tm + mi * tx_n + tx < m
                                        and (bn * ty_n + ty) * r + rr < n
                                    ):
                                        if y_mn:
                                            y[
                                                b,
                                                bm * tm + mi * tx_n + tx,
                                                (bn * ty_n + ty) * r + rr,
                                            ] = acc[ty, tx, mi, rr]
                                        else:
                                            y[
                                                b,
                                                (bn * ty_n + ty) * r + rr,
                                                bm * tm + mi * tx_n + tx,
                                            ] = acc[ty, tx, mi, rr]

    return kernel.with_attrs(
        {
            "tirx.is_scheduled": True,
            "tvm_sparse.kernel": bsr_matmul_kernel_name(block),
            "tvm_sparse.knobs": {"device": "cuda", **knobs.as_attr()},
            # Opaque: FuseOps must not fuse other ops into a kernel it cannot see into.
            "op_pattern": 8,
        }
    )
