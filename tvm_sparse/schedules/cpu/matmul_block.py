"""Reading a matmul-like block: the kind of each iterator and which one an operand is laid
out along, for the rules that tile matmuls (:class:`~.matmul.Matmul`, :class:`~.gemv.GEMV`).

The kinds are dlight's: ``S`` (batch: in ``A``, ``B`` and ``C``), ``I`` (rows: ``A`` and ``C``),
``J`` (columns: ``B`` and ``C``) and ``K`` (the reduction: ``A`` and ``B``), for blocks of the
form ``C[S, I, J] += A[S, I, K] * B[S, J, K]`` in any operand layout.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.gpu.matmul import (
    IterKind,
    IterTrait,
    auto_inline_producers,
    make_iter_fusion_index_map,
)
from tvm.s_tir.schedule import SBlockRV

from .base import NotApplicable, free_vars, single_reduction_block

__all__ = [
    "ITER_I",
    "ITER_J",
    "ITER_K",
    "ITER_S",
    "detect_iter_traits",
    "find_matmul_block",
    "inline_matmul_prologue",
    "innermost_kind",
    "normalize_matmul",
    "var_kinds",
]

ITER_S, ITER_I = IterKind.kIter_S, IterKind.kIter_I
ITER_J, ITER_K = IterKind.kIter_J, IterKind.kIter_K


def detect_iter_traits(block: s_tir.SBlock):
    """Classify the iterators of ``C[S, I, J] += A[S, I, K] * B[S, J, K]``-like blocks.

    Like dlight's ``detect_iter_traits`` but an ``I`` axis of extent one (GEMV, batch 1) is
    allowed. Returns the traits of ``A``, ``B``, ``C`` and the block, or ``None``.
    """
    if len(block.reads) != 2 or len(block.writes) != 1:
        return None

    def _axes(region) -> set[tirx.Var] | None:
        axes: set[tirx.Var] = set()
        for rng in region:
            if not (isinstance(rng.extent, tirx.IntImm) and rng.extent.value == 1):
                return None
            axes |= free_vars(rng.min)
        return axes

    a_axes, b_axes = _axes(block.reads[0].region), _axes(block.reads[1].region)
    c_axes = _axes(block.writes[0].region)
    if a_axes is None or b_axes is None or c_axes is None:
        return None
    traits: dict[tirx.Var, IterTrait] = {}
    for iv in block.iter_vars:
        var, ext = iv.var, iv.dom.extent
        if isinstance(ext, tirx.IntImm) and ext.value == 1:
            kind = IterKind.kIter_T
        elif iv.iter_type == tirx.IterVar.DataPar:
            if var in a_axes and var in b_axes and var in c_axes:
                kind = ITER_S
            elif var in a_axes and var in c_axes:
                kind = ITER_I
            elif var in b_axes and var in c_axes:
                kind = ITER_J
            else:
                return None
        elif iv.iter_type == tirx.IterVar.CommReduce and var in a_axes and var in b_axes:
            if var in c_axes:
                return None
            kind = ITER_K
        else:
            return None
        traits[var] = IterTrait(kind, ext)
    if not {ITER_J, ITER_K} <= {t.kind for t in traits.values()}:
        return None
    order = [iv.var for iv in block.iter_vars]
    return (
        [traits[v] for v in order if v in a_axes],
        [traits[v] for v in order if v in b_axes],
        [traits[v] for v in order if v in c_axes],
        [traits[v] for v in order],
    )


def var_kinds(block: s_tir.SBlock, traits) -> dict[tirx.Var, IterKind]:
    """The kind of each iterator variable of ``block``, given the block's ``traits``."""
    return {iv.var: t.kind for iv, t in zip(block.iter_vars, traits, strict=True)}


def innermost_kind(region, kinds: dict[tirx.Var, IterKind]) -> IterKind | None:
    """Kind of the iterator that indexes the innermost dimension of an access, if it is one."""
    for rng in reversed(region):
        idx = rng.min
        if isinstance(idx, tirx.IntImm):
            continue  # a unit dimension; look one further out
        return kinds.get(idx) if isinstance(idx, tirx.Var) else None
    return None


def find_matmul_block(sch: s_tir.Schedule) -> SBlockRV:
    """The single reduction block of a matmul-like function; raises when there is none."""
    main = single_reduction_block(sch)
    if detect_iter_traits(sch.get(main)) is None:
        raise NotApplicable("reduction is not a matmul")
    return main


def inline_matmul_prologue(sch: s_tir.Schedule) -> tuple[SBlockRV, tuple, dict]:
    """The matmul block with its injective prologue inlined, its traits (:func:`detect_iter_traits`)
    and the kind of each of its iterator variables; raises when there is none."""
    main = find_matmul_block(sch)
    auto_inline_producers(sch, main)
    block = sch.get(main)
    traits = detect_iter_traits(block)
    if traits is None:
        raise NotApplicable("prologue made the reduction non-matmul")
    return main, traits, var_kinds(block, traits[3])


def normalize_matmul(
    sch: s_tir.Schedule, main: SBlockRV, traits: tuple, a_axes: list, b_axes: list, c_axes: list
) -> tuple[SBlockRV, SBlockRV]:
    """Normalise ``main`` to canonical operands: each read and written through a ``reindex``
    copy laid out along the iterator kinds ``a_axes``, ``b_axes``, ``c_axes``, the block's
    iterators ``c_axes`` then ``K``. Returns the copies of ``A`` and ``B``, to inline or to
    schedule (``C``'s is the write-back)."""
    a_traits, b_traits, c_traits, block_traits = traits
    reindex_a = sch.reindex(main, ("read", 0))
    reindex_b = sch.reindex(main, ("read", 1))
    reindex_c = sch.reindex(main, ("write", 0))
    sch.transform_layout(reindex_a, ("write", 0), make_iter_fusion_index_map(a_traits, a_axes))
    sch.transform_layout(reindex_b, ("write", 0), make_iter_fusion_index_map(b_traits, b_axes))
    sch.transform_layout(reindex_c, ("read", 0), make_iter_fusion_index_map(c_traits, c_axes))
    sch.transform_block_layout(main, make_iter_fusion_index_map(block_traits, [*c_axes, ITER_K]))
    return reindex_a, reindex_b
