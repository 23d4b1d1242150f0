"""Block-sparse (BSR) weight times dense activations, vectorised and parallel for x86 CPUs.

Computes ``Y = X @ W.T`` for a pruned ``(N, K)`` weight ``W`` held as :class:`BSRMatrix`, with
data-dependent loops over each block row's nonzero blocks. :class:`BSRMatmulKnobs` picks one of
the register tilings in :mod:`.bsr_matmul_variants` for a shape; the PrimFuncs come out already
scheduled (``tirx.is_scheduled``) with the attribute ``"tvm_sparse.kernel"`` naming the kernel,
so the rest of the pipeline leaves them alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tvm import tirx
from tvm.target import Target

from ..targets.facts import is_neon, vector_lanes
from .bsr_matmul_variants import gemv_kernel, m_kernel, rows_kernel
from .epilogue import EPILOGUE_ATTR, PLAIN, Epilogue
from .kernel_cache import cached_kernel

__all__ = ["BSRMatmulKnobs", "bsr_matmul", "bsr_matmul_kernel_name"]

_VARIANTS = ("auto", "rows", "m", "gemv")
_SPLITS = ("auto", "rows", "outputs")
#: Fp32 accumulators kept in registers (x86-64 has 16 ymm, AVX-512 has 32 zmm).
_ACCUMULATORS = 16
#: Vectors of rows per register tile of the ``"m"`` variant, for vectors of ``_MK_LANES``
#: lanes or more (x86).
_MK_VECTORS, _MK_LANES = 2, 8
#: Block rows per task of the ``"rows"`` variant at most, and tasks it aims for.
_ROW_BLOCK, _ROW_TASKS = 16, 16
#: The ``"m"`` variant on NEON. A 1x1 block's FMAs each need their own vector load of ``X.T``
#: beside the block's weight and index loads: ``v`` vectors per block make ``v + 2`` loads
#: for ``v`` FMAs. The Cortex-A72 issues one 128-bit load and one FMA a cycle, the
#: Neoverse-N1 / A76 two of each, so the loads bound the loop at ``v / (v + 2)`` of the FMA
#: peak: 80% with x86's 8 vectors, 89% with 16 (NEON's 32 registers hold 16 accumulators
#: beside the loads, where AVX2's 16 do not). Each block's index load, address arithmetic and
#: activation loads form a chain whose instructions wait in the N1's 128-entry reorder buffer:
#: one block per iteration fills it before the loads reach their bound. Four blocks per
#: iteration load their weights as pairs (an FMA by element, where one block's weight is a
#: broadcast load that also takes an FMA pipe) and their indices as pairs, ahead of the
#: activation loads.
_NEON_M_KNOBS = {"m_vectors": 16, "unroll": 4}


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
    unroll : int
        ``"m"`` variant: nonzero blocks per iteration of the loop over a block row's blocks
        (the rest of a row in a tail loop).
    m_vectors : int
        ``"m"`` variant: most vectors of ``X`` per register tile when ``m_tile`` is 0 (the
        tile also keeps to 16 accumulators, and to two vectors where tasks take rows).
    split : str
        ``"m"`` variant on a ``(K, M)`` input: tasks take tiles of rows (``"rows"``, as on an
        ``(M, K)`` input, whose tasks transpose their rows) or block rows of outputs over every
        row (``"outputs"``); ``"auto"`` picks by shape.
    """

    lanes: int = 16
    variant: str = "auto"
    m_tile: int = 0
    group: int = 0
    row_block: int = 0
    unroll: int = 1
    m_vectors: int = 8
    split: str = "auto"

    def __post_init__(self) -> None:
        if self.variant not in _VARIANTS:
            raise ValueError(f"variant must be one of {_VARIANTS}, got {self.variant!r}")
        if self.split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {self.split!r}")
        if (
            self.lanes < 1
            or self.m_tile < 0
            or self.group < 0
            or self.row_block < 0
            or self.unroll < 1
            or self.m_vectors < 1
        ):
            raise ValueError(f"knobs must be positive (0 = default), got {self}")

    @classmethod
    def for_target(cls, target: Target, **overrides) -> BSRMatmulKnobs:
        """Defaults for ``target``: the vector width comes from the target's features; NEON
        gets its own ``"m"`` tile (:data:`_NEON_M_KNOBS`)."""
        defaults = dict(_NEON_M_KNOBS) if is_neon(target) else {}
        return cls(lanes=vector_lanes(target), **{**defaults, **overrides})

    def resolve(
        self,
        block: tuple[int, int],
        m: int,
        n: int,
        *,
        batch: int = 1,
        x_layout: str = "MK",
        y_layout: str = "MN",
        k: int = 0,
    ) -> BSRMatmulKnobs:
        """Concrete knobs (no ``"auto"``, no 0) for a ``block``, ``m`` rows of activations,
        ``n`` outputs and ``k`` inputs (0: not known)."""
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
        row_block, split = 1, "auto"
        if variant == "rows":
            vectors_per_row = max(r // self.lanes, 1)
            # AVX-512's 32 zmm hold 16 accumulators beside the loads, twice AVX2's tile; the
            # tile's rows of X stay in L1 only while a task walks several block rows over them
            accumulators = 2 * _ACCUMULATORS if self.lanes >= 16 else _ACCUMULATORS
            m_tile = self.m_tile or max(accumulators // (2 * vectors_per_row), 1)
            group = 1
            row_block = self.row_block or min(max(block_rows // _ROW_TASKS, 1), _ROW_BLOCK)
        else:
            split = self.split
            if x_layout == "MK":
                split = "rows"
            elif split == "auto":
                split = _km_split(m, k, n, self.lanes)
            vectors = max(min(self.m_vectors, _ACCUMULATORS // r), 1)
            if self.lanes >= _MK_LANES and split == "rows":
                # each task copies its own rows (``m_kernel``): short tiles give every core
                # several tasks, where long ones left the rows of a ViT or BERT to one or two,
                # and keep a tile of a conv's K rows in L1. NEON's 4-lane vectors keep the 16
                # its loads need (``_NEON_M_KNOBS``).
                vectors = min(vectors, _MK_VECTORS)
            m_tile = self.m_tile or vectors * self.lanes
            group = self.group or (max(-(-self.lanes // r), 1) if y_layout == "MN" else 1)
            # the kernel pads the rows to whole vectors: a tile of all of them stays whole
            m = -(-m // self.lanes) * self.lanes
        return replace(
            self,
            variant=variant,
            split=split if variant == "m" else "auto",
            m_tile=max(min(m_tile, m), 1),
            group=group,
            row_block=min(row_block, block_rows),
        )


def _km_split(m: int, k: int, n: int, lanes: int) -> str:
    """How the ``"m"`` variant splits a ``(K, M)`` input's work among tasks. By block rows of
    outputs (each task over every row, its tiles as wide as registers allow) unless: the rows
    are few (a 7x7 image), where the ragged last vector of every output row runs as one chain
    of dependent FMAs, and tasks of rows pad it to a whole vector; or K is long beside N and
    the rows many (an im2col matrix), where a task's tile of rows stays in cache for all the
    outputs instead of every output streaming all of ``X``."""
    vectors = -(-m // lanes)
    if vectors <= _FEW_VECTORS or (k >= _LONG_K * n and vectors >= _MANY_VECTORS):
        return "rows"
    return "outputs"


#: Bounds of :func:`_km_split`, in vectors of rows and in K per output.
_FEW_VECTORS, _MANY_VECTORS, _LONG_K = 4, 32, 8


def bsr_matmul_kernel_name(block: tuple[int, int]) -> str:
    """The name used in reports and the ``"tvm_sparse.kernel"`` attribute."""
    return f"bsr_matmul[{block[0]}x{block[1]}]"


@cached_kernel
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
    knobs = knobs.resolve(block, m, n, batch=batch, x_layout=x_layout, y_layout=y_layout, k=k)
    if knobs.variant == "gemv":
        if batch != 1 or m != 1 or x_layout != "MK" or y_layout != "MN":
            raise ValueError("the 'gemv' variant takes a (1, K) input and a (1, N) output")
        func = gemv_kernel(k, n, block, nnzb, block_rows, knobs.lanes, dtype, epilogue)
    elif knobs.variant == "rows":
        if batch != 1 or x_layout != "MK" or y_layout != "MN":
            raise ValueError("the 'rows' variant takes a single (M, K) input and (M, N) output")
        func = rows_kernel(
            m, k, n, block, nnzb, block_rows, knobs.m_tile, knobs.row_block, dtype, epilogue
        )
    else:
        if block_rows % knobs.group:
            raise ValueError(f"block_rows {block_rows} is not a multiple of group {knobs.group}")
        func = m_kernel(
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
                "unroll": knobs.unroll,
                "split": knobs.split,
            },
            # Opaque: FuseOps must not fuse other ops into a kernel it cannot see into.
            "op_pattern": 8,
            **({EPILOGUE_ATTR: epilogue.attr} if epilogue else {}),
        }
    )
