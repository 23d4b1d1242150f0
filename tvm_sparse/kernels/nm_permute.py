"""N:M sparse weight times dense activations on x86, vectorised over outputs with a permute.

``Y = X @ W.T``, ``W`` ``(n, k)`` keeping at most ``N`` of every ``M`` consecutive inputs. A
vector holds ``lanes`` consecutive outputs. For each group of ``M`` inputs of a row of ``X``
the kernel broadcasts the group to every ``M``-wide slice of a register, and for each of the
``N`` kept weights a permute (``vpermilps`` within 128-bit lanes for ``M`` of 2 or 4,
``vpermps`` across the register for 8 or 16) gives every output lane the input its weight
multiplies, and one FMA follows. Each kept weight costs a permute and an FMA, where the dense
GEMM spends ``M / N`` FMAs: the permute needs no load, so unlike :mod:`.nm_matmul` (one load of
``X.T`` per FMA) the loop is bound by the FP pipes, and the weights stream once per register
tile of rows.

The weight is stored per block of ``n_vectors * lanes`` outputs, group by group, as ``values``
and the kept inputs' positions in their group (``slots``, int32: the permute's control
vector), so a task reads one contiguous stream of each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import tirx
from tvm.script import tirx as T
from tvm.target import Target
from tvm.target.codegen import target_has_features

from ..targets.facts import is_neon, num_cores, vector_lanes
from .epilogue import EPILOGUE_ATTR, PLAIN, Epilogue
from .formats import NMMatrix, round_up
from .kernel_cache import cached_kernel
from .nm_matmul import nm_matmul_kernel_name

__all__ = ["NMPermuteKnobs", "nm_permute", "nm_permute_applies", "nm_permute_weights"]

#: Register tiles, rows by vectors of outputs: for 2:4 the accumulators, the two weights'
#: values and slots of one group, the broadcast group and the permuted inputs fit in
#: AVX-512's 32 registers (16 + 8 + 3) and in AVX2's 16 (8 + 4 + 3). Groups that keep more
#: weights (4:8) bring more values and slots than fit beside them, and LLVM spills a few.
_TILES = {16: (8, 2), 8: (8, 1)}


def _permute_intrinsic(m_group: int, lanes: int) -> str | None:
    """The LLVM intrinsic that picks each lane's input from a broadcast group of ``m_group``."""
    if m_group in (2, 4):  # within each 128-bit lane: the group repeats in every one
        return {8: "llvm.x86.avx.vpermilvar.ps.256", 16: "llvm.x86.avx512.vpermilvar.ps.512"}.get(
            lanes
        )
    if m_group in (8, 16) and m_group <= lanes:
        return {8: "llvm.x86.avx2.permps", 16: "llvm.x86.avx512.permvar.sf.512"}.get(lanes)
    return None


def nm_permute_applies(target: Target, nm: tuple[int, int], k: int) -> bool:
    """Whether ``target`` has the permute for ``N:M`` groups of ``k`` inputs (``k`` a multiple
    of ``M``: the broadcast of the last group would read past the row)."""
    if str(target.kind.name) != "llvm" or is_neon(target) or k % nm[1]:
        return False
    lanes = vector_lanes(target)
    if lanes == 8 and nm[1] >= 8 and not target_has_features("avx2", target):
        return False
    return _permute_intrinsic(nm[1], lanes) is not None


@dataclass(frozen=True)
class NMPermuteKnobs:
    """Tiling of :func:`nm_permute`.

    Parameters
    ----------
    lanes : int
        Fp32 lanes of one vector register.
    rows : int
        Rows of ``X`` per register tile.
    n_vectors : int
        Vectors of outputs per register tile; a task computes that block of outputs for its
        rows, and the weight is stored by such blocks.
    cores : int
        Cores the kernel runs on: rows are split among tasks when the blocks of outputs are
        too few to give every core four.
    """

    lanes: int = 16
    rows: int = 8
    n_vectors: int = 2
    cores: int = 1

    def __post_init__(self) -> None:
        if min(self.lanes, self.rows, self.n_vectors, self.cores) < 1:
            raise ValueError(f"every knob must be positive, got {self}")

    @classmethod
    def for_target(cls, target: Target, **overrides) -> NMPermuteKnobs:
        lanes = vector_lanes(target)
        rows, n_vectors = _TILES.get(lanes, (8, 1))
        knobs = {"lanes": lanes, "rows": rows, "n_vectors": n_vectors, "cores": num_cores(target)}
        return cls(**{**knobs, **overrides})

    @property
    def block(self) -> int:
        return self.lanes * self.n_vectors


def nm_permute_weights(mat: NMMatrix, knobs: NMPermuteKnobs) -> tuple[np.ndarray, np.ndarray]:
    """``values`` and ``slots`` ``(blocks, groups, N, n_vectors, lanes)`` of an N:M weight
    (its rows padded to a multiple of ``knobs.block``)."""
    keep, group = mat.nm
    rows, per_row = mat.values.shape
    if rows % knobs.block:
        raise ValueError(f"{rows} rows are not a multiple of the block of {knobs.block}")
    shape = (rows // knobs.block, knobs.n_vectors, knobs.lanes, per_row // keep, keep)

    def blocked(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a.reshape(shape).transpose(0, 3, 4, 1, 2))

    return blocked(mat.values), blocked((mat.columns % group).astype("int32"))


@cached_kernel
def nm_permute(
    m: int,
    k: int,
    n: int,
    nm: tuple[int, int],
    *,
    knobs: NMPermuteKnobs,
    dtype: str = "float32",
    epilogue: Epilogue = PLAIN,
) -> tirx.PrimFunc:
    """A scheduled PrimFunc for ``Y = X @ W.T`` with ``W`` as :func:`nm_permute_weights`.

    Returns
    -------
    tvm.tirx.PrimFunc
        Parameters ``(x, values, slots, y)``, with ``bias`` ``(n,)`` before ``y`` when the
        epilogue adds one.
    """
    keep, group = nm
    lanes, nv = knobs.lanes, knobs.n_vectors
    intrinsic = _permute_intrinsic(group, lanes)
    if intrinsic is None or k % group:
        raise ValueError(f"no permute for {keep}:{group} on {lanes} lanes with k={k}")
    block = knobs.block
    blocks, groups = -(-n // block), k // group
    mr = max(min(knobs.rows, m), 1)
    # rows split among tasks only when the blocks alone leave a core short of work
    chunks = max(min(-(-4 * knobs.cores // blocks), -(-m // mr)), 1)
    chunk = round_up(-(-m // chunks), mr)
    chunks = -(-m // chunk)
    vt, it = f"{dtype}x{lanes}", f"int32x{lanes}"
    zero = tirx.const(0, dtype)

    def broadcast(v):  # the group in every M-wide slice of the register
        return tirx.Shuffle([v] * (lanes // group), [tirx.IntImm("int32", i % group)
                                                     for i in range(lanes)])  # fmt: skip

    @T.macro
    def tile(x, values, slots, bias, y, b, m0, rows):
        acc = T.alloc_buffer((rows, nv), vt, scope="local")
        w = T.alloc_buffer((keep, nv), vt, scope="local")
        s = T.alloc_buffer((keep, nv), it, scope="local")
        out = T.alloc_buffer((rows, block), dtype, scope="local")
        for r, v in T.grid(rows, nv):
            acc[r, v] = T.Broadcast(zero, lanes)
        for g in range(groups):
            for j, v in T.grid(keep, nv):
                w[j, v] = values[b, g, j, v, T.Ramp(0, 1, lanes)]
                s[j, v] = slots[b, g, j, v, T.Ramp(0, 1, lanes)]
            for r in T.unroll(rows):
                for v in T.unroll(nv):
                    for j in T.unroll(keep):
                        acc[r, v] = acc[r, v] + T.call_llvm_pure_intrin(
                            vt, intrinsic, broadcast(x[m0 + r, T.Ramp(g * group, 1, group)]),
                            s[j, v]) * w[j, v]  # fmt: skip
        for r, v in T.grid(rows, nv):
            out[r, T.Ramp(v * lanes, 1, lanes)] = acc[r, v]
        for r in range(rows):
            if b * block + block <= n:
                for c in T.vectorized(block):
                    y[m0 + r, b * block + c] = epilogue.apply(out[r, c], bias, b * block + c)
            else:
                for c in range(n - b * block):
                    y[m0 + r, b * block + c] = epilogue.apply(out[r, c], bias, b * block + c)

    @T.macro
    def body(x, values, slots, bias, y):
        for p in T.parallel(blocks * chunks):
            for t in range(chunk // mr):
                if (p % chunks) * chunk + t * mr + mr <= m:
                    tile(x, values, slots, bias, y, p // chunks, (p % chunks) * chunk + t * mr, mr)
            if m % mr > 0 and p % chunks == chunks - 1:
                tile(x, values, slots, bias, y, p // chunks, m // mr * mr, m % mr)

    wshape = (blocks, groups, keep, nv, lanes)
    if epilogue.bias:

        @T.prim_func(private=True)
        def kernel(
            x: T.Buffer((m, k), dtype),
            values: T.Buffer(wshape, dtype),
            slots: T.Buffer(wshape, "int32"),
            bias: T.Buffer((n,), dtype),
            y: T.Buffer((m, n), dtype),
        ):
            T.func_attr({"tirx.noalias": True})
            body(x, values, slots, bias, y)

    else:

        @T.prim_func(private=True)
        def kernel(
            x: T.Buffer((m, k), dtype),
            values: T.Buffer(wshape, dtype),
            slots: T.Buffer(wshape, "int32"),
            y: T.Buffer((m, n), dtype),
        ):
            T.func_attr({"tirx.noalias": True})
            body(x, values, slots, None, y)

    return kernel.with_attrs(
        {
            "tirx.is_scheduled": True,
            "tvm_sparse.kernel": nm_matmul_kernel_name(nm),
            "tvm_sparse.knobs": {
                "variant": "permute",
                "lanes": lanes,
                "rows": mr,
                "n_vectors": nv,
                "cores": knobs.cores,
            },  # fmt: skip
            "op_pattern": 8,
            **({EPILOGUE_ATTR: epilogue.attr} if epilogue else {}),
        }
    )
