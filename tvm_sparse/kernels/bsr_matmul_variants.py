"""The TVMScript bodies of the BSR matmul's register tilings (:func:`.bsr_matmul.bsr_matmul`
resolves the knobs, picks one and marks the result scheduled)."""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

__all__ = ["gemv_kernel", "m_kernel", "rows_kernel"]

#: Tasks the ``"m"`` variant cuts an ``(M, K)`` input's work into, where it can.
_LEAST_TASKS = 16


def _entry(body, x_shape, data_shape, y_shape, n, nnzb, block_rows, dtype, bias):
    """The PrimFunc around ``body``: ``(x, data, indices, indptr, y)``, with ``bias`` before
    ``y`` when the epilogue adds one."""
    if bias:

        @T.prim_func(private=True)
        def with_bias(
            x: T.Buffer(x_shape, dtype),
            data: T.Buffer(data_shape, dtype),
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
        data: T.Buffer(data_shape, dtype),
        indices: T.Buffer((nnzb,), "int32"),
        indptr: T.Buffer((block_rows + 1,), "int32"),
        y: T.Buffer(y_shape, dtype),
    ):
        T.func_attr({"tirx.noalias": True})
        body(x, data, indices, indptr, None, y)

    return kernel


def rows_kernel(m, k, n, block, nnzb, block_rows, m_tile, row_block, dtype, epilogue):
    """Vectorise over the ``r`` outputs of a block (``r`` a multiple of the vector lanes).

    Each block is one vector load per input column, reused by ``m_tile`` rows of ``X`` whose
    elements are broadcast straight from memory into the FMA. Reads ``X`` as ``(M, K)`` and
    writes ``Y`` as ``(M, N)``: no layout change. A task takes ``row_block`` block rows and walks
    them once per ``m_tile`` rows of ``X``, so those rows stay in L1 across the block rows
    instead of streaming from L2 for every one. ``data`` is ``(nnzb, c, r)``.
    """
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

    return _entry(body, (m, k), (nnzb, c, r), (m, n), n, nnzb, block_rows, dtype, epilogue.bias)


def gemv_kernel(k, n, block, nnzb, block_rows, lanes, dtype, epilogue):
    """One row of activations gives no reuse to vectorise over: vectorise over the flattened
    (block, column) nonzeros of an output row instead, gathering the matching activations.
    Independent lanes also break the FMA latency chain that one scalar accumulator would form.
    """
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

    return _entry(body, (1, k), (nnzb, r, c), (1, n), n, nnzb, block_rows, dtype, epilogue.bias)


def _transpose_rounds(lanes):
    """The rounds of a ``lanes`` x ``lanes`` register transpose (Eklundh's), as macros over
    ``reg[round, row]``: in the round of distance ``d``, rows ``i`` and ``i + d`` swap their
    off-diagonal ``d`` x ``d`` blocks, each new row one two-register shuffle. Rounds of
    copies come first, so that every width runs the same :data:`_TRANSPOSE_ROUNDS` rounds."""

    def shuffle_round(d):
        low = [tirx.IntImm("int32", v if v & d == 0 else lanes + v - d) for v in range(lanes)]
        high = [tirx.IntImm("int32", v + d if v & d == 0 else lanes + v) for v in range(lanes)]

        @T.macro
        def run(reg, s):
            for p in T.unroll(lanes // 2):
                pair = [reg[s, p // d * 2 * d + p % d], reg[s, p // d * 2 * d + p % d + d]]
                reg[s + 1, p // d * 2 * d + p % d] = tirx.Shuffle(pair, low)
                reg[s + 1, p // d * 2 * d + p % d + d] = tirx.Shuffle(pair, high)

        return run

    @T.macro
    def copy_round(reg, s):
        for i in T.unroll(lanes):
            reg[s + 1, i] = reg[s, i]

    rounds = []
    d = lanes // 2
    while d >= 1:
        rounds.append(shuffle_round(d))
        d //= 2
    if len(rounds) > _TRANSPOSE_ROUNDS:
        raise ValueError(f"a register transpose takes at most 16 lanes, got {lanes}")
    return [copy_round] * (_TRANSPOSE_ROUNDS - len(rounds)) + rounds


#: Rounds of :func:`_transpose_rounds`: log2 of the widest vector, 16 lanes.
_TRANSPOSE_ROUNDS = 4


def m_kernel(batch, m, k, n, block, nnzb, block_rows, knobs, x_layout, y_layout, dtype, epilogue):
    """Vectorise over ``M`` (every block, 1x1 included).

    Activations are read transposed, ``X.T`` ``(K, M)``, so one vector load of ``X.T`` feeds the
    ``r`` outputs of a block. Each task takes a tile of rows and copies them into its own
    ``X.T`` tile (``k_pad`` x ``m_tile``, zero-padded), which stays in L1 while the task's
    outputs read it: transposed from an ``(M, K)`` input (``x_layout="MK"``), or copied from the
    input's natural layout (``"KM"``: a 1x1 convolution's ``(C, H*W)`` or an im2col matrix),
    whose rows lie ``M`` floats apart, a page each for a large image. Output is ``(N, M)``
    directly, or ``(M, N)`` by collecting ``group`` block rows into a tile stored as full
    vectors (writing single columns of ``(M, N)`` thrashes cache lines and TLB).
    """
    r, c = block
    mt, group, unroll = knobs.m_tile, knobs.group, knobs.unroll
    k_pad = -(-k // c) * c
    mn = y_layout == "MN"
    transpose_x = x_layout == "MK"
    # rows of X.T padded to whole vectors: a ragged tail (ViT's 197 rows, a 14x14 image) would
    # leave a partial vector in every accumulator, which LLVM splits into narrower
    # instructions; the padded rows are zero and never stored
    guard_m = m % knobs.lanes != 0
    m_run = -(-m // knobs.lanes) * knobs.lanes if guard_m else m
    m_full, m_tail = m_run // mt, m_run % mt
    width = group * r  # outputs per task: one store tile of (M, N), or r rows of (N, M)
    per_batch = -(-n // width)  # tasks per batch item
    full_tasks = n // width
    n_tail = n - full_tasks * width
    x_shape = (batch, m, k) if transpose_x else (batch, k, m)
    y_shape = (batch, m, n) if mn else (batch, n, m)
    zero = tirx.const(0, dtype)
    # tasks own tiles of rows and copy them for themselves, so that no thread reads what
    # another wrote in this kernel (a cache line between two core complexes costs several
    # times one within a complex); where the rows alone leave the cores few tasks, the outputs
    # are cut into chunks too, each copying its rows again: only where the outputs outnumber
    # the inputs, so that the repeated copy stays small beside them
    m_tasks = -(-m_run // mt)
    n_chunks = 1
    if k <= n:
        n_chunks = max(min(_LEAST_TASKS // (batch * m_tasks), per_batch), 1)
    chunk = -(-per_batch // n_chunks)
    n_chunks = -(-per_batch // chunk)

    lanes = knobs.lanes
    r0, r1, r2, r3 = _transpose_rounds(lanes)
    # an input already (K, M) is read where it lies, unless its K needs zero padding
    direct = not transpose_x and k_pad == k
    by_outputs = direct and knobs.split == "outputs"
    m_whole = m // lanes * lanes

    @T.macro
    def transpose_registers(reg):
        # reg[0, :] (lanes vectors) transposed into reg[_TRANSPOSE_ROUNDS, :]
        r0(reg, 0)
        r1(reg, 1)
        r2(reg, 2)
        r3(reg, 3)

    @T.macro
    def transpose_out(accs, out, mb):
        # lanes x lanes of the accumulators, outputs by rows, into the store tile through
        # registers: element by element, the narrow stores stall the tile's vector loads
        reg = T.alloc_buffer((_TRANSPOSE_ROUNDS + 1, lanes), f"{dtype}x{lanes}", scope="local")
        for i in T.unroll(lanes):
            reg[0, i] = accs[i, T.Ramp(mb * lanes, 1, lanes)]
        transpose_registers(reg)
        for i in T.unroll(lanes):
            out[mb * lanes + i, T.Ramp(0, 1, lanes)] = reg[_TRANSPOSE_ROUNDS, i]

    @T.macro
    def block_fma(x, xt, data, b, acc, m0, w, j, col):
        # the FMAs of nonzero block j (block column col) on the w rows of the tile of X.T
        for cc in T.unroll(c):
            for rr in T.unroll(r):
                for mi in T.vectorized(w):
                    acc[rr, mi] = acc[rr, mi] + data[j, rr, cc] * xt[0, col * c + cc, mi]

    @T.macro
    def accumulate(x, xt, data, indices, indptr, b, acc, m0, w, row):
        for rr in T.unroll(r):
            for mi in T.vectorized(w):
                acc[rr, mi] = zero
        if unroll == 1:
            for j in range(indptr[row], indptr[row + 1]):
                block_fma(x, xt, data, b, acc, m0, w, j, indices[j])
        else:
            # ``unroll`` blocks per iteration, their block columns loaded first: the index
            # loads and address arithmetic of all of them issue ahead of the activation loads,
            # where one block per iteration waits for each index before its loads can start
            cols = T.alloc_buffer((unroll,), "int32")
            count = indptr[row + 1] - indptr[row]
            for jo in range(count // unroll):
                for ju in T.unroll(unroll):
                    cols[ju] = indices[indptr[row] + jo * unroll + ju]
                for ju in T.unroll(unroll):
                    j = indptr[row] + jo * unroll + ju
                    block_fma(x, xt, data, b, acc, m0, w, j, cols[ju])
            for jt in range(count % unroll):
                j = indptr[row + 1] - count % unroll + jt
                block_fma(x, xt, data, b, acc, m0, w, j, indices[j])

    @T.macro
    def tile_mn(x, xt, data, indices, indptr, bias, y, b, t, m0, w):
        out = T.alloc_buffer((w, width), dtype)
        accs = T.alloc_buffer((width, w), dtype)
        for g in range(group):
            acc = T.alloc_buffer((r, w), dtype)
            accumulate(x, xt, data, indices, indptr, b, acc, m0, w, t * group + g)
            for rr in T.unroll(r):
                for mi in T.vectorized(w):
                    accs[g * r + rr, mi] = acc[rr, mi]
        if width == lanes and w % lanes == 0:
            for mb in range(w // lanes):
                transpose_out(accs, out, mb)
        else:
            for mi, ww in T.grid(w, width):
                out[mi, ww] = accs[ww, mi]
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
        if m0 + w <= m:
            if t < full_tasks:
                for rr in T.unroll(r):
                    for mi in T.vectorized(w):
                        y[b, t * r + rr, m0 + mi] = epilogue.apply(acc[rr, mi], bias, t * r + rr)
            else:
                for rr in range(n_tail):
                    for mi in T.vectorized(w):
                        y[b, t * r + rr, m0 + mi] = epilogue.apply(acc[rr, mi], bias, t * r + rr)
        else:  # the last tile: its rows padded to whole vectors are not stored
            for rr, mi in T.grid(r, m - m0):
                if t < full_tasks or rr < n_tail:
                    y[b, t * r + rr, m0 + mi] = epilogue.apply(acc[rr, mi], bias, t * r + rr)

    @T.macro
    def transpose_block(x, xt, b, row, col, k0):
        # lanes x lanes of X through registers (vector loads, shuffles, vector stores), where
        # element by element a transpose is bound by its scattered stores
        reg = T.alloc_buffer((_TRANSPOSE_ROUNDS + 1, lanes), f"{dtype}x{lanes}", scope="local")
        for i in T.unroll(lanes):
            reg[0, i] = x[b, row + i, T.Ramp(k0, 1, lanes)]
        transpose_registers(reg)
        for i in T.unroll(lanes):
            xt[0, k0 + i, T.Ramp(col, 1, lanes)] = reg[_TRANSPOSE_ROUNDS, i]

    @T.macro
    def transpose_rows(x, xt, b, m0, w):
        # rows m0 .. m0 + w of X into the task's X.T tile, zero-padded along K and M: whole
        # blocks through registers, the edges element by element
        for mb in range(-(-w // lanes)):
            for kb in range(-(-k_pad // lanes)):
                if (
                    kb * lanes + lanes <= k
                    and mb * lanes + lanes <= w
                    and (m0 + mb * lanes + lanes <= m)
                ):
                    transpose_block(x, xt, b, m0 + mb * lanes, mb * lanes, kb * lanes)
                else:
                    for mi, kk in T.grid(lanes, lanes):
                        if mb * lanes + mi < w and kb * lanes + kk < k_pad:
                            xt[0, kb * lanes + kk, mb * lanes + mi] = T.if_then_else(
                                kb * lanes + kk < k and m0 + mb * lanes + mi < m,
                                x[
                                    b,
                                    T.min(m0 + mb * lanes + mi, m - 1),
                                    T.min(kb * lanes + kk, k - 1),
                                ],
                                zero,
                            )

    @T.macro
    def copy_rows(x, xt, b, m0, w):
        # columns m0 .. m0 + w of X.T into the task's tile, zero-padded along K and M
        if m0 + w <= m:
            for kk in range(k):
                for mi in T.vectorized(w):
                    xt[0, kk, mi] = x[b, kk, m0 + mi]
        else:
            for kk, mi in T.grid(k, w):
                xt[0, kk, mi] = T.if_then_else(m0 + mi < m, x[b, kk, T.min(m0 + mi, m - 1)], zero)
        if k_pad > k:
            for kk, mi in T.grid(k_pad - k, w):
                xt[0, k + kk, mi] = zero

    @T.macro
    def any_tile(x, xt, data, indices, indptr, bias, y, b, t, m0, w):
        if mn:
            tile_mn(x, xt, data, indices, indptr, bias, y, b, t, m0, w)
        else:
            tile_nm(x, xt, data, indices, indptr, bias, y, b, t, m0, w)

    @T.macro
    def chunk_tiles(x, xt, data, indices, indptr, bias, y, b, nc, m0, w):
        for tc in range(chunk):
            if nc * chunk + tc < per_batch:
                any_tile(x, xt, data, indices, indptr, bias, y, b, nc * chunk + tc, m0, w)

    @T.macro
    def rows_task(x, data, indices, indptr, bias, y, b, nc, m0, w):
        if direct:
            if m0 + w <= m:  # a whole tile of X.T read where it lies: a view from its column
                xv = T.decl_buffer((1, k, m), dtype, data=x.data, elem_offset=b * k * m + m0)
                chunk_tiles(x, xv, data, indices, indptr, bias, y, b, nc, m0, w)
            else:
                xt = T.alloc_buffer((1, k_pad, w), dtype)
                copy_rows(x, xt, b, m0, w)
                chunk_tiles(x, xt, data, indices, indptr, bias, y, b, nc, m0, w)
        else:
            xt = T.alloc_buffer((1, k_pad, w), dtype)
            if transpose_x:
                transpose_rows(x, xt, b, m0, w)
            else:
                copy_rows(x, xt, b, m0, w)
            chunk_tiles(x, xt, data, indices, indptr, bias, y, b, nc, m0, w)

    @T.macro
    def outputs_task(x, data, indices, indptr, bias, y, b, t):
        # block row t over every row of X.T where it lies, tiles of whole vectors first and the
        # ragged rest in a narrower one, which cannot read past the input's last row (its
        # lanes form one chain of dependent FMAs: ``_km_split`` sends small images to "rows")
        for mo in range(m_whole // mt):
            xv = T.decl_buffer((1, k, m), dtype, data=x.data, elem_offset=b * k * m + mo * mt)
            any_tile(x, xv, data, indices, indptr, bias, y, b, t, mo * mt, mt)
        if m_whole % mt > 0:
            xw = T.decl_buffer((1, k, m), dtype, data=x.data,
                               elem_offset=b * k * m + m_whole // mt * mt)  # fmt: skip
            any_tile(x, xw, data, indices, indptr, bias, y, b, t, m_whole // mt * mt,
                     m_whole % mt)  # fmt: skip
        if m_whole < m:
            xr = T.decl_buffer((1, k, m), dtype, data=x.data, elem_offset=b * k * m + m_whole)
            any_tile(x, xr, data, indices, indptr, bias, y, b, t, m_whole, m - m_whole)

    @T.macro
    def body(x, data, indices, indptr, bias, y):
        if by_outputs:
            for p in T.parallel(batch * per_batch):
                outputs_task(x, data, indices, indptr, bias, y, p // per_batch, p % per_batch)
        else:
            for p in T.parallel(batch * m_tasks * n_chunks):
                if m_tail == 0:  # every tile whole (the tail branch would build a 0-row tile)
                    rows_task(x, data, indices, indptr, bias, y, p // (m_tasks * n_chunks),
                                  p % n_chunks, p // n_chunks % m_tasks * mt, mt)  # fmt: skip
                elif p // n_chunks % m_tasks < m_full:
                    rows_task(x, data, indices, indptr, bias, y, p // (m_tasks * n_chunks),
                                  p % n_chunks, p // n_chunks % m_tasks * mt, mt)  # fmt: skip
                else:
                    rows_task(x, data, indices, indptr, bias, y, p // (m_tasks * n_chunks),
                                  p % n_chunks, m_full * mt, m_tail)  # fmt: skip

    return _entry(body, x_shape, (nnzb, r, c), y_shape, n, nnzb, block_rows, dtype, epilogue.bias)
