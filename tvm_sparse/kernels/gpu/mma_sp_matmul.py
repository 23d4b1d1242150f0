"""2:4 sparse fp16 weight times fp16 activations on Ampere sparse tensor cores (``mma.sp``).

``Y = X @ W.T`` with ``W`` ``(N, K)`` pruned 2:4 along ``K`` and compressed by
:func:`~.mma_sp_weights.to_mma_sp`. The sparse operand of ``mma.sp`` is ``A``, so ``W`` plays
``A`` (``N`` is the instruction's ``M``) and ``X.T`` plays ``B``: each
``mma.sp.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32`` multiplies a 16x32 tile of ``W`` (16
kept values a row) by a 32x8 slice of ``X.T`` into 16x8 fp32 accumulators, which are ``Y.T``.
It needs sm_80 or newer (Jetson Orin is sm_87).

Algorithm
---------
A CTA of ``warps_n * warps_m`` warps computes a ``(m_tile, n_tile)`` tile of ``Y``; each warp
``tiles_n`` 16-row tiles of ``W`` by ``tiles_m`` 8-row tiles of ``X``. The CTA walks ``K`` in
``k_tile`` steps: its threads stage the ``(m_tile, k_tile)`` slice of ``X`` in shared memory
(coalesced, vectorised when ``K`` allows, zero past ``M`` and ``K``); then for each 32-wide
``mma`` step a thread reads its ``A`` registers and metadata straight from global memory (one
16-byte and one 4-byte load: the weights were laid out in fragment order at compile time), its
``B`` registers from the shared tile (one ``half2`` each; rows are padded by 8 halves so a warp's
reads hit 32 distinct banks), and issues ``tiles_n * tiles_m`` ``mma.sp``. Rows of ``W`` past
``N`` are read clamped and never stored; stores are guarded by ``M`` and ``N``.

The thread-to-element maps come from :mod:`.mma_sp_layout`, shared with the compression and
with the NumPy emulator the tests run this kernel's data movement against: with
``mma="emulated"`` the instruction is replaced by a call (per warp, on the CPU) to the packed
function :data:`EMULATED_MMA_SP`, and every other statement stays as built for the GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from tvm import tirx
from tvm.script import tirx as T

from ..kernel_cache import cached_kernel
from .mma_sp_layout import MMA_K, MMA_M, MMA_N, REGS, b_element, c_element, meta_slot
from .tiling import MAX_SHARED_BYTES

__all__ = ["EMULATED_MMA_SP", "MMASpKnobs", "cuda_mma_sp_matmul", "mma_sp_kernel_name"]

#: The packed function an ``mma="emulated"`` kernel calls as ``(a, b, e, acc, warp)`` for each
#: warp's ``mma.sp`` step: ``a`` ``(warps, 32, tiles_n, 4)`` and ``b`` ``(warps, 32, tiles_m,
#: 4)`` uint32 registers, ``e`` ``(warps, 32, tiles_n)`` metadata, ``acc`` ``(warps, 32,
#: tiles_n, tiles_m, 4)`` fp32 accumulators it updates. Registered by the tests' emulator.
EMULATED_MMA_SP = "tvm_sparse.testing.mma_sp_warp"
#: Halves each shared row of ``X`` is padded by: 4 banks, so the 8 rows a warp's ``B`` loads
#: touch start in 8 distinct groups of 4 banks.
_ROW_PAD = 8
_LANES = 32


def mma_sp_kernel_name() -> str:
    return "mma_sp_matmul[2:4]"


@dataclass(frozen=True)
class MMASpKnobs:
    """Tiling of the ``mma.sp`` kernel; 0 means "pick from the shape". Reasoned defaults, not
    measured: no GPU has tuned them yet.

    Parameters
    ----------
    warps_n, warps_m : int
        Warp grid of a CTA along ``N`` and ``M``; 0: ``warps_m`` 2 (1 for ``M <= 8``) and
        ``warps_n`` the rest of 4 warps, so a CTA keeps 128 threads whatever ``M``.
    tiles_n : int
        16-row ``W`` tiles per warp.
    tiles_m : int
        8-row ``X`` tiles per warp; 0: enough for ``M``, 1 to 4.
    k_tile : int
        Columns of ``X`` staged per step, a multiple of 32.
    """

    warps_n: int = 0
    warps_m: int = 0
    tiles_n: int = 2
    tiles_m: int = 0
    k_tile: int = 64

    def __post_init__(self) -> None:
        if min(self.warps_n, self.tiles_n, self.warps_m, self.tiles_m, self.k_tile) < 0 or not (
            self.tiles_n and self.k_tile and self.k_tile % MMA_K == 0
        ):
            raise ValueError(
                f"knobs: tiles_n >= 1, warps_n, warps_m, tiles_m >= 0 (0 = from the shape) and "
                f"k_tile a positive multiple of {MMA_K}: {self}"
            )

    def resolve(self, m: int, k: int) -> MMASpKnobs:
        """Concrete knobs for ``m`` rows and ``k`` inputs of ``X``."""
        rows8 = -(-m // MMA_N)
        warps_m = self.warps_m or min(2, rows8)
        warps_n = self.warps_n or max(4 // warps_m, 1)
        tiles_m = self.tiles_m or min(4, 1 << (-(-rows8 // warps_m) - 1).bit_length())
        k_tile = min(self.k_tile, -(-k // MMA_K) * MMA_K)
        resolved = replace(self, warps_n=warps_n, warps_m=warps_m, tiles_m=tiles_m, k_tile=k_tile)
        if resolved.warps * _LANES > 1024 or resolved.shared_bytes() > MAX_SHARED_BYTES:
            raise ValueError(
                f"knobs: {resolved.warps} warps and {resolved.shared_bytes()} bytes of shared "
                f"memory exceed a CTA's 32 warps / {MAX_SHARED_BYTES} bytes; lower them"
            )
        return resolved

    @property
    def warps(self) -> int:
        return self.warps_n * self.warps_m

    @property
    def n_tile(self) -> int:
        return self.warps_n * self.tiles_n * MMA_M

    @property
    def m_tile(self) -> int:
        return self.warps_m * self.tiles_m * MMA_N

    def shared_bytes(self) -> int:
        return self.m_tile * (self.k_tile + _ROW_PAD) * 2

    def as_attr(self) -> dict[str, int]:
        return {
            "warps_n": self.warps_n,
            "warps_m": self.warps_m,
            "tiles_n": self.tiles_n,
            "tiles_m": self.tiles_m,
            "k_tile": self.k_tile,
        }


@cached_kernel
def cuda_mma_sp_matmul(
    m: int,
    k: int,
    n: int,
    *,
    knobs: MMASpKnobs | None = None,
    out_dtype: str = "float16",
    mma: str = "ptx",
) -> tirx.PrimFunc:
    """A scheduled CUDA PrimFunc for ``Y = X @ W.T``, fp16 ``X`` and 2:4 fp16 ``W``, fp32
    accumulation.

    Parameters
    ----------
    m, k, n : int
        ``X`` ``(m, k)``, ``W`` ``(n, k)``, ``Y`` ``(m, n)``.
    knobs : MMASpKnobs, optional
        Tiling; resolved for this shape.
    out_dtype : "float16" | "float32"
        Element type of ``Y``.
    mma : "ptx" | "emulated"
        ``"emulated"`` calls :data:`EMULATED_MMA_SP` instead of the instruction, for checking
        the kernel on the CPU (with its thread loops made serial).

    Returns
    -------
    tvm.tirx.PrimFunc
        Parameters ``(x, values, metadata, y)``: ``x`` ``(1, m, k)`` fp16, ``values`` and
        ``metadata`` as :func:`~.mma_sp_weights.to_mma_sp` makes them for ``W``, ``y`` ``(1,
        m, n)``.
    """
    if min(m, k, n) < 1:
        raise ValueError(f"need positive m, k, n, got {(m, k, n)}")
    if out_dtype not in ("float16", "float32"):
        raise ValueError(f"out_dtype must be 'float16' or 'float32', got {out_dtype!r}")
    if mma not in ("ptx", "emulated"):
        raise ValueError(f"mma must be 'ptx' or 'emulated', got {mma!r}")
    knobs = (knobs or MMASpKnobs()).resolve(m, k)
    wn, wm, tn, tm, kt = knobs.warps_n, knobs.warps_m, knobs.tiles_n, knobs.tiles_m, knobs.k_tile
    warps, m_tile, n_tile = knobs.warps, knobs.m_tile, knobs.n_tile
    tiles_total, steps = -(-n // MMA_M), -(-k // MMA_K)
    steps_per_chunk = kt // MMA_K
    chunks = -(-steps // steps_per_chunk)
    exact_k = steps % steps_per_chunk == 0
    grid_n, grid_m = -(-n // n_tile), -(-m // m_tile)
    # X is copied in vectors of `vec` halves: a vector never straddles K, so one test guards it
    vec = math.gcd(k, 8)
    vectors = m_tile * kt // vec
    loads = -(-vectors // (warps * _LANES))
    exact_load = vectors % (warps * _LANES) == 0
    per_row = kt // vec
    stride = kt + _ROW_PAD
    zero = tirx.const(0, "float16")
    emulated = mma == "emulated"

    @T.prim_func(private=True, s_tir=True)
    def kernel(
        x: T.Buffer((1, m, k), "float16"),
        values: T.Buffer((tiles_total, steps, _LANES, REGS), "uint32"),
        metadata: T.Buffer((tiles_total, steps, 16), "uint32"),
        y: T.Buffer((1, m, n), out_dtype),
    ):
        T.func_attr({"tirx.noalias": True})
        # flat, so that buffer compaction keeps the padded row stride
        xs = T.sblock_alloc_buffer((m_tile * stride,), "float16", scope="shared")
        acc = T.sblock_alloc_buffer((warps, _LANES, tn, tm, 4), "float32", scope="local")
        fa = T.sblock_alloc_buffer((warps, _LANES, tn, REGS), "uint32", scope="local")
        fe = T.sblock_alloc_buffer((warps, _LANES, tn), "uint32", scope="local")
        fb = T.sblock_alloc_buffer((warps, _LANES, tm, REGS), "uint32", scope="local")
        for bn in T.thread_binding(grid_n, thread="blockIdx.x"):
            for bm in T.thread_binding(grid_m, thread="blockIdx.y"):
                for w in T.thread_binding(warps, thread="threadIdx.y"):
                    for lane in T.thread_binding(_LANES, thread="threadIdx.x"):
                        for i in T.unroll(tn):
                            for j in T.unroll(tm):
                                for c in T.unroll(4):
                                    acc[w, lane, i, j, c] = T.float32(0)
                for kc in range(chunks):
                    # stage X[bm * m_tile :, kc * kt :] (rows padded) in shared memory
                    for w in T.thread_binding(warps, thread="threadIdx.y"):
                        for lane in T.thread_binding(_LANES, thread="threadIdx.x"):
                            for s in T.unroll(loads):
                                if exact_load or (s * warps + w) * _LANES + lane < vectors:
                                    for v in T.vectorized(vec):
                                        xs[
                                            ((s * warps + w) * _LANES + lane) // per_row * stride
                                            + ((s * warps + w) * _LANES + lane) % per_row * vec
                                            + v
                                        ] = T.if_then_else(
                                            bm * m_tile
                                            + ((s * warps + w) * _LANES + lane) // per_row
                                            < m
                                            and kc * kt
                                            + ((s * warps + w) * _LANES + lane) % per_row * vec
                                            < k,
                                            x[
                                                0,
                                                T.min(
                                                    bm * m_tile
                                                    + ((s * warps + w) * _LANES + lane) // per_row,
                                                    m - 1,
                                                ),
                                                T.min(
                                                    kc * kt
                                                    + ((s * warps + w) * _LANES + lane)
                                                    % per_row
                                                    * vec,
                                                    k - vec,
                                                )
                                                + v,
                                            ],
                                            zero,
                                        )
                    for st in range(steps_per_chunk):
                        if exact_k or kc * steps_per_chunk + st < steps:
                            # each thread's registers: A and metadata from global, B from shared
                            for w in T.thread_binding(warps, thread="threadIdx.y"):
                                for lane in T.thread_binding(_LANES, thread="threadIdx.x"):
                                    for i in T.unroll(tn):
                                        for r in T.vectorized(REGS):
                                            fa[w, lane, i, r] = values[
                                                T.min(
                                                    (bn * wn + w // wm) * tn + i, tiles_total - 1
                                                ),
                                                kc * steps_per_chunk + st,
                                                lane,
                                                r,
                                            ]
                                        fe[w, lane, i] = metadata[
                                            T.min((bn * wn + w // wm) * tn + i, tiles_total - 1),
                                            kc * steps_per_chunk + st,
                                            meta_slot(lane),
                                        ]
                                    for j in T.unroll(tm):
                                        for r in T.unroll(REGS):
                                            fb[w, lane, j, r] = T.reinterpret(
                                                "uint32",
                                                xs[
                                                    T.Ramp(
                                                        (
                                                            (w % wm * tm + j) * MMA_N
                                                            + b_element(lane, r, 0)[1]
                                                        )
                                                        * stride
                                                        + st * MMA_K
                                                        + b_element(lane, r, 0)[0],
                                                        1,
                                                        2,
                                                    )
                                                ],
                                            )
                            for w in T.thread_binding(warps, thread="threadIdx.y"):
                                for lane in T.thread_binding(_LANES, thread="threadIdx.x"):
                                    if emulated:
                                        if lane == 0:
                                            T.evaluate(
                                                T.call_packed(EMULATED_MMA_SP, fa, fb, fe, acc, w)
                                            )
                                    else:
                                        for i in T.unroll(tn):
                                            for j in T.unroll(tm):
                                                T.ptx.mma.sp.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32(
                                                    acc[w, lane, i, j, 0],
                                                    acc[w, lane, i, j, 1],
                                                    acc[w, lane, i, j, 2],
                                                    acc[w, lane, i, j, 3],
                                                    fa[w, lane, i, 0],
                                                    fa[w, lane, i, 1],
                                                    fa[w, lane, i, 2],
                                                    fa[w, lane, i, 3],
                                                    fb[w, lane, j, 0],
                                                    fb[w, lane, j, 1],
                                                    fb[w, lane, j, 2],
                                                    fb[w, lane, j, 3],
                                                    acc[w, lane, i, j, 0],
                                                    acc[w, lane, i, j, 1],
                                                    acc[w, lane, i, j, 2],
                                                    acc[w, lane, i, j, 3],
                                                    fe[w, lane, i],
                                                    0,  # sparsity selector: threads 0, 1
                                                )
                for w in T.thread_binding(warps, thread="threadIdx.y"):
                    for lane in T.thread_binding(_LANES, thread="threadIdx.x"):
                        for i in T.unroll(tn):
                            for j in T.unroll(tm):
                                for c in T.unroll(4):
                                    if (
                                        bm * m_tile
                                        + (w % wm * tm + j) * MMA_N
                                        + c_element(lane, c)[1]
                                        < m
                                        and ((bn * wn + w // wm) * tn + i) * MMA_M
                                        + c_element(lane, c)[0]
                                        < n
                                    ):
                                        y[
                                            0,
                                            bm * m_tile
                                            + (w % wm * tm + j) * MMA_N
                                            + c_element(lane, c)[1],
                                            ((bn * wn + w // wm) * tn + i) * MMA_M
                                            + c_element(lane, c)[0],
                                        ] = T.Cast(out_dtype, acc[w, lane, i, j, c])

    return kernel.with_attrs(
        {
            "tirx.is_scheduled": True,
            "tvm_sparse.kernel": mma_sp_kernel_name(),
            "tvm_sparse.knobs": {"device": "cuda", **knobs.as_attr()},
            "op_pattern": 8,
        }
    )
