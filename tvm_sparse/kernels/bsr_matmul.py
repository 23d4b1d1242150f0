"""Block-sparse (BSR) weight times dense activations, vectorised and parallel for x86 CPUs.

Computes ``Y = X @ W.T`` for a pruned ``(N, K)`` weight ``W`` held as :class:`BSRMatrix`, with
data-dependent loops over each block row's nonzero blocks. Two register tilings, picked by
:class:`BSRMatmulKnobs`:

``"rows"``
    Vectorise over the ``r`` outputs of a block (``r`` a multiple of the vector lanes, e.g. 16x1
    blocks with AVX-512). Each block is one vector load per input column, reused by ``m_tile``
    rows of ``X`` whose elements are broadcast straight from memory into the FMA. Reads ``X`` as
    ``(M, K)`` and writes ``Y`` as ``(M, N)``, so no layout change at all. A task takes
    ``row_block`` block rows and walks them once per ``m_tile`` rows of ``X``, so those rows stay
    in L1 across the block rows instead of streaming from L2 for every one.
``"m"``
    Vectorise over ``M`` (works for every block, 1x1 included). Activations are read
    transposed, ``X.T`` ``(K, M)``, so one vector load of ``X.T`` feeds the ``r`` outputs of a
    block; the transpose happens inside the kernel (``x_layout="MK"``) or is the input's natural
    layout (``x_layout="KM"``: a 1x1 convolution's ``(C, H*W)`` or an im2col matrix). Output is
    ``(N, M)`` directly, or ``(M, N)`` by collecting ``group`` block rows into a tile that is then
    stored as full vectors (writing single columns of ``(M, N)`` thrashes cache lines and TLB).

The PrimFuncs come out already scheduled (``tirx.is_scheduled``) with the attribute
``"tvm_sparse.kernel"`` naming the kernel, so the rest of the pipeline leaves them alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tvm import tirx
from tvm.script import tirx as T
from tvm.target import Target

from ..targets.facts import vector_lanes
from .epilogue import EPILOGUE_ATTR, PLAIN, Epilogue

__all__ = ["BSRMatmulKnobs", "bsr_matmul", "bsr_matmul_kernel_name"]

_VARIANTS = ("auto", "rows", "m", "gemv")
#: Fp32 accumulators kept in registers (x86-64 has 16 ymm, AVX-512 has 32 zmm).
_ACCUMULATORS = 16
#: Block rows per task of the ``"rows"`` variant at most, and tasks it aims for.
_ROW_BLOCK, _ROW_TASKS = 16, 16


@dataclass(frozen=True)
class BSRMatmulKnobs:
    """Tuning knobs of the BSR matmul; the autotuner searches exactly these.

    Parameters
    ----------
    lanes : int
        Fp32 lanes of one vector register (16 with AVX-512, 8 with AVX2).
    variant : str
        ``"rows"``, ``"m"``, ``"gemv"`` or ``"auto"``: ``"rows"`` when ``r`` is a multiple of
        ``lanes``, else ``"gemv"`` for a single row of activations, else ``"m"``.
    m_tile : int
        Rows of ``X`` per register tile; 0 picks a tile of about 16 accumulators.
    group : int
        ``"m"`` variant writing ``(M, N)``: block rows collected per store tile; 0 picks enough
        for one full vector of outputs.
    row_block : int
        ``"rows"`` variant: block rows per parallel task, each walked once per ``m_tile`` rows
        of ``X``; 0 picks up to 16, leaving at least 16 tasks.
    """

    lanes: int = 16
    variant: str = "auto"
    m_tile: int = 0
    group: int = 0
    row_block: int = 0

    def __post_init__(self) -> None:
        if self.variant not in _VARIANTS:
            raise ValueError(f"variant must be one of {_VARIANTS}, got {self.variant!r}")
        if self.lanes < 1 or self.m_tile < 0 or self.group < 0 or self.row_block < 0:
            raise ValueError(f"knobs must be positive (0 = default), got {self}")

    @classmethod
    def for_target(cls, target: Target, **overrides) -> BSRMatmulKnobs:
        """Defaults for ``target``: the vector width comes from the target's features."""
        return cls(lanes=vector_lanes(target), **overrides)

    def resolve(
        self,
        block: tuple[int, int],
        m: int,
        n: int,
        *,
        batch: int = 1,
        x_layout: str = "MK",
        y_layout: str = "MN",
    ) -> BSRMatmulKnobs:
        """Concrete knobs (no ``"auto"``, no 0) for a ``block``, ``m`` rows of activations and
        ``n`` outputs."""
        r, _ = block
        block_rows = -(-n // r)
        variant = self.variant
        natural = batch == 1 and x_layout == "MK" and y_layout == "MN"
        if variant == "auto":
            if r % self.lanes == 0 and natural:
                variant = "rows"
            elif m == 1 and natural:
                variant = "gemv"
            else:
                variant = "m"
        if variant == "gemv":
            return replace(self, variant=variant, m_tile=1, group=1, row_block=1)
        row_block = 1
        if variant == "rows":
            vectors_per_row = max(r // self.lanes, 1)
            # AVX-512's 32 zmm hold 16 accumulators beside the loads. On the 90% 16x1 BERT FFN,
            # with row_block 16: 16 rows 0.50 ms, 8 rows 0.53 ms (0.68 ms with neither); with
            # a task of one block row, 16 rows of X overflowed L1 (0.72 ms)
            accumulators = 2 * _ACCUMULATORS if self.lanes >= 16 else _ACCUMULATORS
            m_tile = self.m_tile or max(accumulators // (2 * vectors_per_row), 1)
            group = 1
            row_block = self.row_block or min(max(block_rows // _ROW_TASKS, 1), _ROW_BLOCK)
        else:
            vectors = max(min(8, _ACCUMULATORS // r), 1)
            m_tile = self.m_tile or vectors * self.lanes
            group = self.group or (max(-(-self.lanes // r), 1) if y_layout == "MN" else 1)
        return replace(
            self,
            variant=variant,
            m_tile=max(min(m_tile, m), 1),
            group=group,
            row_block=min(row_block, block_rows),
        )


def bsr_matmul_kernel_name(block: tuple[int, int]) -> str:
    """The name used in reports and the ``"tvm_sparse.kernel"`` attribute."""
    return f"bsr_matmul[{block[0]}x{block[1]}]"


def bsr_matmul(
    m: int,
    k: int,
    n: int,
    block: tuple[int, int],
    nnzb: int,
    block_rows: int,
    *,
    knobs: BSRMatmulKnobs,
    batch: int = 1,
    x_layout: str = "MK",
    y_layout: str = "MN",
    dtype: str = "float32",
    epilogue: Epilogue = PLAIN,
) -> tirx.PrimFunc:
    """A scheduled PrimFunc for ``Y = X @ W.T`` with ``W`` in BSR form.

    Parameters
    ----------
    m, k, n : int
        ``X`` is ``(m, k)``, ``W`` is ``(n, k)``; ``Y`` is ``(m, n)``. Not necessarily multiples
        of the block: ``X`` is zero-padded on the fly and only the ``n`` real outputs are written.
    block : tuple[int, int]
        ``(r, c)``.
    nnzb, block_rows : int
        Size of the BSR arrays (``block_rows * r >= n``, see :func:`to_bsr`'s ``row_multiple``).
    knobs : BSRMatmulKnobs
        Register tiling; resolved for this shape with :meth:`BSRMatmulKnobs.resolve`.
    batch : int
        Leading batch of independent ``X`` / ``Y`` sharing ``W`` (``"m"`` variant only).
    x_layout, y_layout : str
        ``"MK"`` / ``"KM"`` and ``"MN"`` / ``"NM"`` (last two dims of the batched buffers).
    dtype : str
        Element type of activations and weights.
    epilogue : Epilogue
        Bias add and activation applied to every output as it is stored.

    Returns
    -------
    tvm.tirx.PrimFunc
        Parameters ``(x, data, indices, indptr, y)``, with ``bias`` ``(n,)`` before ``y`` when
        the epilogue adds one; ``data`` is ``(nnzb, c, r)`` for the ``"rows"`` variant
        (:meth:`BSRMatrix.data_cr`) and ``(nnzb, r, c)`` otherwise.
    """
    if x_layout not in ("MK", "KM") or y_layout not in ("MN", "NM"):
        raise ValueError(f"x_layout must be MK|KM and y_layout MN|NM, got {x_layout}, {y_layout}")
    knobs = knobs.resolve(block, m, n, batch=batch, x_layout=x_layout, y_layout=y_layout)
    if knobs.variant == "gemv":
        if batch != 1 or m != 1 or x_layout != "MK" or y_layout != "MN":
            raise ValueError("the 'gemv' variant takes a (1, K) input and a (1, N) output")
        func = _gemv_kernel(k, n, block, nnzb, block_rows, knobs.lanes, dtype, epilogue)
    elif knobs.variant == "rows":
        if batch != 1 or x_layout != "MK" or y_layout != "MN":
            raise ValueError("the 'rows' variant takes a single (M, K) input and (M, N) output")
        func = _rows_kernel(
            m, k, n, block, nnzb, block_rows, knobs.m_tile, knobs.row_block, dtype, epilogue
        )
    else:
        if block_rows % knobs.group:
            raise ValueError(f"block_rows {block_rows} is not a multiple of group {knobs.group}")
        func = _m_kernel(
            batch, m, k, n, block, nnzb, block_rows, knobs, x_layout, y_layout, dtype, epilogue
        )
    return func.with_attrs(
        {
            "tirx.is_scheduled": True,
            "tvm_sparse.kernel": bsr_matmul_kernel_name(block),
            "tvm_sparse.knobs": {
                "variant": knobs.variant,
                "lanes": knobs.lanes,
                "m_tile": knobs.m_tile,
                "group": knobs.group,
                "row_block": knobs.row_block,
            },
            # Opaque: FuseOps must not fuse other ops into a kernel it cannot see into.
            "op_pattern": 8,
            **({EPILOGUE_ATTR: epilogue.attr} if epilogue else {}),
        }
    )


def _rows_kernel(m, k, n, block, nnzb, block_rows, m_tile, row_block, dtype, epilogue):
    r, c = block
    mt, rb = m_tile, row_block
    m_full, m_tail = m // mt, m % mt
    row_tasks = -(-n // r)
    tasks = -(-row_tasks // rb)
    full_rows = n // r  # block rows whose r outputs are all real
    n_tail = n - full_rows * r
    k_exact = k % c == 0
    zero = tirx.const(0, dtype)

    @T.macro
    def tile(x, data, indices, indptr, bias, y, i, m0, w):
        acc = T.alloc_buffer((w, r), dtype)
        for mi in T.unroll(w):
            for rr in T.vectorized(r):
                acc[mi, rr] = zero
        for j in range(indptr[i], indptr[i + 1]):
            for cc in T.unroll(c):
                for mi in T.unroll(w):
                    for rr in T.vectorized(r):
                        if k_exact:
                            acc[mi, rr] = (
                                acc[mi, rr] + x[m0 + mi, indices[j] * c + cc] * data[j, cc, rr]
                            )
                        else:
                            acc[mi, rr] = (
                                acc[mi, rr]
                                + T.if_then_else(
                                    indices[j] * c + cc < k,
                                    x[m0 + mi, T.min(indices[j] * c + cc, k - 1)],
                                    zero,
                                )
                                * data[j, cc, rr]
                            )
        if i < full_rows:
            for mi in T.unroll(w):
                for rr in T.vectorized(r):
                    y[m0 + mi, i * r + rr] = epilogue.apply(acc[mi, rr], bias, i * r + rr)
        else:
            for mi, rr in T.grid(w, n_tail):
                y[m0 + mi, i * r + rr] = epilogue.apply(acc[mi, rr], bias, i * r + rr)

    @T.macro
    def task_rows(x, data, indices, indptr, bias, y, t, m0, w):
        # the task's block rows, one after another, on the same rows of X (in L1 by then)
        for ii in range(rb):
            if t * rb + ii < row_tasks:
                tile(x, data, indices, indptr, bias, y, t * rb + ii, m0, w)

    @T.macro
    def body(x, data, indices, indptr, bias, y):
        for t in T.parallel(tasks):
            for mo in range(m_full):
                task_rows(x, data, indices, indptr, bias, y, t, mo * mt, mt)
            if m_tail > 0:
                task_rows(x, data, indices, indptr, bias, y, t, m_full * mt, m_tail)

    if epilogue.bias:

        @T.prim_func(private=True)
        def with_bias(
            x: T.Buffer((m, k), dtype),
            data: T.Buffer((nnzb, c, r), dtype),
            indices: T.Buffer((nnzb,), "int32"),
            indptr: T.Buffer((block_rows + 1,), "int32"),
            bias: T.Buffer((n,), dtype),
            y: T.Buffer((m, n), dtype),
        ):
            T.func_attr({"tirx.noalias": True})
            body(x, data, indices, indptr, bias, y)

        return with_bias

    @T.prim_func(private=True)
    def kernel(
        x: T.Buffer((m, k), dtype),
        data: T.Buffer((nnzb, c, r), dtype),
        indices: T.Buffer((nnzb,), "int32"),
        indptr: T.Buffer((block_rows + 1,), "int32"),
        y: T.Buffer((m, n), dtype),
    ):
        T.func_attr({"tirx.noalias": True})
        body(x, data, indices, indptr, None, y)

    return kernel


def _gemv_kernel(k, n, block, nnzb, block_rows, lanes, dtype, epilogue):
    # One row of activations gives no reuse to vectorise over: vectorise over the flattened
    # (block, column) nonzeros of an output row instead, gathering the matching activations.
    # Independent lanes also break the FMA latency chain that one scalar accumulator would form.
    r, c = block
    row_tasks = -(-n // r)
    zero = tirx.const(0, dtype)

    @T.macro
    def body(x, data, indices, indptr, bias, y):
        for i in T.parallel(row_tasks):
            for rr in range(r):
                if i * r + rr < n:
                    acc = T.alloc_buffer((lanes,), dtype)
                    total = T.alloc_buffer((1,), dtype)
                    for v in T.vectorized(lanes):
                        acc[v] = zero
                    total[0] = zero
                    for jo in range((indptr[i + 1] - indptr[i]) * c // lanes):
                        for v in T.vectorized(lanes):
                            acc[v] = (
                                acc[v]
                                + data[
                                    (indptr[i] * c + jo * lanes + v) // c,
                                    rr,
                                    (indptr[i] * c + jo * lanes + v) % c,
                                ]
                                * x[
                                    0,
                                    T.min(
                                        indices[(indptr[i] * c + jo * lanes + v) // c] * c
                                        + (indptr[i] * c + jo * lanes + v) % c,
                                        k - 1,
                                    ),
                                ]
                            )
                    for e in range(
                        indptr[i] * c + (indptr[i + 1] - indptr[i]) * c // lanes * lanes,
                        indptr[i + 1] * c,
                    ):
                        total[0] = (
                            total[0]
                            + data[e // c, rr, e % c]
                            * x[0, T.min(indices[e // c] * c + e % c, k - 1)]
                        )
                    for v in range(lanes):
                        total[0] = total[0] + acc[v]
                    y[0, i * r + rr] = epilogue.apply(total[0], bias, i * r + rr)

    if epilogue.bias:

        @T.prim_func(private=True)
        def with_bias(
            x: T.Buffer((1, k), dtype),
            data: T.Buffer((nnzb, r, c), dtype),
            indices: T.Buffer((nnzb,), "int32"),
            indptr: T.Buffer((block_rows + 1,), "int32"),
            bias: T.Buffer((n,), dtype),
            y: T.Buffer((1, n), dtype),
        ):
            T.func_attr({"tirx.noalias": True})
            body(x, data, indices, indptr, bias, y)

        return with_bias

    @T.prim_func(private=True)
    def kernel(
        x: T.Buffer((1, k), dtype),
        data: T.Buffer((nnzb, r, c), dtype),
        indices: T.Buffer((nnzb,), "int32"),
        indptr: T.Buffer((block_rows + 1,), "int32"),
        y: T.Buffer((1, n), dtype),
    ):
        T.func_attr({"tirx.noalias": True})
        body(x, data, indices, indptr, None, y)

    return kernel


def _m_kernel(batch, m, k, n, block, nnzb, block_rows, knobs, x_layout, y_layout, dtype, epilogue):
    r, c = block
    mt, group = knobs.m_tile, knobs.group
    k_pad = -(-k // c) * c
    mn = y_layout == "MN"
    transpose_x = x_layout == "MK"
    # rows of X.T padded to whole vectors: a ragged tail (ViT's 197 rows) would leave a partial
    # vector in every accumulator, which LLVM splits into narrower instructions; the padded
    # rows are zero and never stored
    guard_m = transpose_x and mn and m % knobs.lanes != 0
    m_run = -(-m // knobs.lanes) * knobs.lanes if guard_m else m
    m_full, m_tail = m_run // mt, m_run % mt
    width = group * r  # outputs per task: one store tile of (M, N), or r rows of (N, M)
    per_batch = -(-n // width)  # tasks per batch item
    full_tasks = n // width
    n_tail = n - full_tasks * width
    guard_k = not transpose_x and k_pad != k
    x_shape = (batch, m, k) if transpose_x else (batch, k, m)
    y_shape = (batch, m, n) if mn else (batch, n, m)
    zero = tirx.const(0, dtype)
    tk = 16  # transpose tile along K
    k_tiles = -(-k_pad // tk)
    xt_shape = (batch, k_pad, m_run) if transpose_x else (1, 1, 1)

    @T.macro
    def accumulate(x, xt, data, indices, indptr, b, acc, m0, w, row):
        for rr in T.unroll(r):
            for mi in T.vectorized(w):
                acc[rr, mi] = zero
        for j in range(indptr[row], indptr[row + 1]):
            for cc in T.unroll(c):
                for rr in T.unroll(r):
                    for mi in T.vectorized(w):
                        if transpose_x:
                            acc[rr, mi] = (
                                acc[rr, mi] + data[j, rr, cc] * xt[b, indices[j] * c + cc, m0 + mi]
                            )
                        elif guard_k:
                            acc[rr, mi] = acc[rr, mi] + data[j, rr, cc] * T.if_then_else(
                                indices[j] * c + cc < k,
                                x[b, T.min(indices[j] * c + cc, k - 1), m0 + mi],
                                zero,
                            )
                        else:
                            acc[rr, mi] = (
                                acc[rr, mi] + data[j, rr, cc] * x[b, indices[j] * c + cc, m0 + mi]
                            )

    @T.macro
    def tile_mn(x, xt, data, indices, indptr, bias, y, b, t, m0, w):
        out = T.alloc_buffer((w, width), dtype)
        for g in range(group):
            acc = T.alloc_buffer((r, w), dtype)
            accumulate(x, xt, data, indices, indptr, b, acc, m0, w, t * group + g)
            for rr in T.unroll(r):
                for mi in T.unroll(w):
                    out[mi, g * r + rr] = acc[rr, mi]
        if t < full_tasks:
            for mi in range(w):
                if m0 + mi < m:  # the rows padded to whole vectors are not stored
                    for ww in T.vectorized(width):
                        y[b, m0 + mi, t * width + ww] = epilogue.apply(
                            out[mi, ww], bias, t * width + ww
                        )
        else:
            for mi, ww in T.grid(w, n_tail):
                if m0 + mi < m:  # the rows padded to whole vectors are not stored
                    y[b, m0 + mi, t * width + ww] = epilogue.apply(
                        out[mi, ww], bias, t * width + ww
                    )

    @T.macro
    def tile_nm(x, xt, data, indices, indptr, bias, y, b, t, m0, w):
        acc = T.alloc_buffer((r, w), dtype)
        accumulate(x, xt, data, indices, indptr, b, acc, m0, w, t)
        if t < full_tasks:
            for rr in T.unroll(r):
                for mi in T.vectorized(w):
                    y[b, t * r + rr, m0 + mi] = epilogue.apply(acc[rr, mi], bias, t * r + rr)
        else:
            for rr in range(n_tail):
                for mi in T.vectorized(w):
                    y[b, t * r + rr, m0 + mi] = epilogue.apply(acc[rr, mi], bias, t * r + rr)

    @T.macro
    def body(x, data, indices, indptr, bias, y):
        # X.T zero-padded to whole blocks along K, for an (M, K) input.
        xt = T.alloc_buffer(xt_shape, dtype)
        if transpose_x:
            for bko in T.parallel(batch * k_tiles):
                for mm in range(m_run):
                    for kk in T.unroll(tk):
                        if (bko % k_tiles) * tk + kk < k_pad:
                            xt[bko // k_tiles, (bko % k_tiles) * tk + kk, mm] = T.if_then_else(
                                (bko % k_tiles) * tk + kk < k and mm < m,
                                x[
                                    bko // k_tiles,
                                    T.min(mm, m - 1),
                                    T.min((bko % k_tiles) * tk + kk, k - 1),
                                ],
                                zero,
                            )
        for b in range(batch):
            for t in T.parallel(per_batch):
                for mo in range(m_full):
                    if mn:
                        tile_mn(x, xt, data, indices, indptr, bias, y, b, t, mo * mt, mt)
                    else:
                        tile_nm(x, xt, data, indices, indptr, bias, y, b, t, mo * mt, mt)
                if m_tail > 0:
                    if mn:
                        tile_mn(x, xt, data, indices, indptr, bias, y, b, t, m_full * mt, m_tail)
                    else:
                        tile_nm(x, xt, data, indices, indptr, bias, y, b, t, m_full * mt, m_tail)

    if epilogue.bias:

        @T.prim_func(private=True)
        def with_bias(
            x: T.Buffer(x_shape, dtype),
            data: T.Buffer((nnzb, r, c), dtype),
            indices: T.Buffer((nnzb,), "int32"),
            indptr: T.Buffer((block_rows + 1,), "int32"),
            bias: T.Buffer((n,), dtype),
            y: T.Buffer(y_shape, dtype),
        ):
            T.func_attr({"tirx.noalias": True})
            body(x, data, indices, indptr, bias, y)

        return with_bias

    @T.prim_func(private=True)
    def kernel(
        x: T.Buffer(x_shape, dtype),
        data: T.Buffer((nnzb, r, c), dtype),
        indices: T.Buffer((nnzb,), "int32"),
        indptr: T.Buffer((block_rows + 1,), "int32"),
        y: T.Buffer(y_shape, dtype),
    ):
        T.func_attr({"tirx.noalias": True})
        body(x, data, indices, indptr, None, y)

    return kernel
