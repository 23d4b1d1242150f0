"""Shared pieces of the dense CPU schedule rules: target gating, knobs and IR queries.

Every rule in this package derives from :class:`CPUScheduleRule`. Its ``apply`` checks the target
and the function, then calls the rule's ``schedule``; a schedule primitive that refuses (the rule's
assumptions did not hold for this function) means "not mine", so the next rule is tried. Its
``sample`` does the same with the knobs drawn by a :class:`KnobSampler`, for the rules that
support it: the autotuner's search space. The target facts the knobs are sized by are in
:mod:`tvm_sparse.targets.facts`; the schedule steps the tiled rules share are in :mod:`.tiling`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.s_tir.dlight import ScheduleRule
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.schedule import LoopRV, SBlockRV
from tvm.target import Target
from tvm.tirx.analysis import undefined_vars

from ...targets.backend import CPU, backend_of
from ...targets.facts import num_cores, vector_bits, vector_lanes  # noqa: F401  (re-exported)
from .knob_sampler import KnobDecisionError, KnobSampler

logger = logging.getLogger(__name__)

__all__ = [
    "LAYOUT_REWRITE_ATTR",
    "PREFETCH_ATTR",
    "TILE_SCOPE",
    "CPUScheduleRule",
    "NotApplicable",
    "VectorKnobs",
    "block_loop_kinds",
    "find_window_reduction",
    "free_vars",
    "is_reduction_block",
    "iter_stmts",
    "leading_spatial",
    "loop_extent",
    "num_cores",
    "pick_factor",
    "single_reduction_block",
    "vector_bits",
    "vector_lanes",
]


#: Storage scope of the accumulators a schedule gives each register tile (``cache_write``),
#: the default scope of every other buffer. On a CPU target ``LowerTVMBuiltin`` leaves a
#: "global" allocation under 1 KB (``kMaxStackAlloca``) on the stack, where LLVM keeps an
#: unrolled accumulator in registers; a "local" one of any size becomes a
#: ``TVMBackendAllocWorkspace`` call in every tile, with the accumulator zeroed and written back
#: through that memory, which dominates a tile of few FMAs per output (a 1x1 conv of 16 input
#: channels). As for MetaSchedule's CPU tiling, which caches writes in "global".
#: A tile of 1 KB or more (AVX-512's 8 x 3 matmul tile: 1.5 KB) still takes the call.
TILE_SCOPE = "global"


class NotApplicable(Exception):
    """Raised inside ``schedule`` when the function is not of the rule's kind."""


@dataclass
class VectorKnobs:
    """Knobs sized by the SIMD width alone; the base of the rules' knob dataclasses.

    Attributes
    ----------
    vector_lanes : int
        fp32 lanes of one SIMD register.
    """

    vector_lanes: int = 16

    @classmethod
    def for_target(cls, target: Target) -> VectorKnobs:
        """Defaults for ``target``: one fp32 SIMD register wide."""
        return cls(vector_lanes=vector_lanes(target))


class CPUScheduleRule(ScheduleRule):
    """Base of the CPU rules: gates on llvm targets and turns :class:`NotApplicable` into ``None``.

    Subclasses implement :meth:`schedule`, which raises :class:`NotApplicable` to say that the
    function is not theirs. A schedule primitive that refuses part-way is a failure, not a
    refusal: it reaches ``ApplySchedules``, which gives the function to the next rule and says
    which rule raised in the compile report.

    Parameters
    ----------
    knobs : optional
        Fixed knobs, an instance of the rule's :attr:`knobs_type`; by default derived from the
        target with its ``for_target``.
    """

    #: The dataclass of the rule's knobs, with a ``for_target(target)`` constructor.
    knobs_type: type[VectorKnobs] = VectorKnobs

    #: Whether :meth:`schedule` takes a ``sampler`` and draws its knobs from it (see
    #: :meth:`sample`); the autotuner searches these rules' knobs.
    samples_knobs: bool = False

    def __init__(self, knobs: VectorKnobs | None = None):
        self.knobs = knobs

    def knobs_for(self, target: Target) -> VectorKnobs:
        """The fixed knobs, or else the defaults of :attr:`knobs_type` for ``target``."""
        return self.knobs or self.knobs_type.for_target(target)

    def is_target_available(self, target: Target) -> bool:
        """Whether ``target`` is a CPU target this rule can schedule for."""
        return backend_of(target, allow_none=True) is CPU

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        """Schedule ``func`` for ``target``, or return ``None`` when the rule does not apply.

        With ``tunable`` a rule that :attr:`samples_knobs` draws them at random, each draw a
        ``sample_categorical`` of the trace; otherwise (and always for the other rules) its
        knobs are the fixed ones.
        """
        if tunable and self.samples_knobs:
            sampled = self.sample(func, target, fill=None)
            return sampled[0] if sampled is not None else None
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        try:
            return self.schedule(sch, target, self.knobs_for(target))
        except NotApplicable:
            return None
        # anything else (a primitive refused half-way) goes to ApplySchedules, which passes the
        # function to the next rule and says so in the report

    def sample(
        self,
        func: tirx.PrimFunc,
        target: Target,
        decisions: Sequence[int | None] = (),
        *,
        fill: int | None = 0,
    ) -> tuple[s_tir.Schedule, KnobSampler] | None:
        """Like :meth:`apply`, with the knobs drawn by a :class:`KnobSampler` in the trace.

        Parameters
        ----------
        func, target :
            As in :meth:`apply`.
        decisions : sequence of int or None
            Candidate index of each knob in the order the rule draws them; 0 is the default.
        fill : int or None
            Decision for the knobs past ``decisions``: 0 (default value) or ``None`` (random).

        Returns
        -------
        (s_tir.Schedule, KnobSampler) or None
            The schedule and the sampler, which lists the knobs drawn, their candidates and the
            decisions taken; ``None`` when the rule does not apply or does not sample its
            knobs (:attr:`samples_knobs`).

        Raises
        ------
        KnobDecisionError
            A decision is not an index of its knob's candidates.
        """
        if not self.samples_knobs:
            return None
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        sampler = KnobSampler(sch, decisions, fill=fill)
        try:
            return self.schedule(sch, target, self.knobs_for(target), sampler), sampler
        except KnobDecisionError:
            raise
        except NotApplicable:
            return None
        except Exception as err:  # noqa: BLE001 - a refused primitive means "not mine"
            logger.debug("%s declined knobs %s: %s", type(self).__name__, sampler.knobs, err)
            return None

    def schedule(self, sch: s_tir.Schedule, target: Target, knobs: VectorKnobs) -> s_tir.Schedule:
        """Schedule the function held by ``sch`` in place with ``knobs`` and return ``sch``.

        Rules that :attr:`samples_knobs` take a fourth argument, ``sampler``: a
        :class:`KnobSampler` to draw their knobs from, or ``None`` for the fixed knobs.
        """
        raise NotImplementedError


# --- annotations -------------------------------------------------------------------------------


#: Loop annotation a rule puts on a loop whose iterations read consecutive contiguous chunks of
#: the buffer it names: ``tvm_sparse.passes.InjectPrefetch`` then prefetches the next chunk.
PREFETCH_ATTR = "tvm_sparse.prefetch"

#: Block annotation that ``relax.transform.SplitLayoutRewritePreproc`` splits into its own
#: function, so that ``FoldConstant`` packs a constant weight once, at compile time.
LAYOUT_REWRITE_ATTR = "meta_schedule.layout_rewrite_preproc"


# --- loop helpers -------------------------------------------------------------------------------


def loop_extent(sch: s_tir.Schedule, loop: LoopRV) -> int | None:
    """Static extent of ``loop``, or ``None`` when it is symbolic."""
    extent = sch.get(loop).extent
    return int(extent.value) if isinstance(extent, tirx.IntImm) else None


def pick_factor(extent: int | None, preferred: int, candidates: Iterable[int] = ()) -> int:
    """Largest factor of ``extent`` not above ``preferred``; ``candidates`` are tried first.

    A symbolic extent gets ``preferred`` itself (the split then carries a predicate).
    """
    if extent is None:
        return preferred
    for cand in candidates:
        if 0 < cand <= extent and extent % cand == 0:
            return cand
    for cand in range(min(preferred, extent), 0, -1):
        if extent % cand == 0:
            return cand
    return 1


def is_reduction_block(sch: s_tir.Schedule, block: SBlockRV) -> bool:
    """Whether ``block`` has a reduction iterator."""
    return any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)


def single_reduction_block(sch: s_tir.Schedule) -> SBlockRV:
    """The one reduction block at the root of the function; raises when there is not one."""
    blocks = sch.get_child_blocks(get_root_block(sch))
    reductions = [b for b in blocks if is_reduction_block(sch, b)]
    if len(reductions) != 1:
        raise NotApplicable("expects exactly one reduction block")
    return reductions[0]


def leading_spatial(kinds: str) -> int:
    """How many ``"S"`` lead the loop kinds ``kinds`` (as :func:`block_loop_kinds` spells them)."""
    return len(kinds) - len(kinds.lstrip("S"))


def find_window_reduction(sch: s_tir.Schedule) -> tuple[SBlockRV, int]:
    """The single one-operand reduction block whose loops are spatial, then reduction (a pool,
    a row sum), and how many spatial loops lead; raises when there is none."""
    main = single_reduction_block(sch)
    if len(sch.get(main).reads) != 1:
        raise NotApplicable("reduces more than one operand (matmul-like)")
    kinds = "".join(block_loop_kinds(sch, main))
    n_spatial = leading_spatial(kinds)
    if set(kinds[n_spatial:]) != {"R"}:
        raise NotApplicable("loops are not spatial then reduction")
    return main, n_spatial


def free_vars(expr: tirx.PrimExpr) -> set[tirx.Var]:
    """The variables ``expr`` reads."""
    return set(undefined_vars(expr))


def iter_stmts(stmt):
    """Yield ``stmt`` and every statement nested in it, parents first.

    The installed TVM exposes no TIR statement visitor to Python, so this walks the statement
    kinds that schedules produce.
    """
    stack = [stmt]
    while stack:
        node = stack.pop()
        if node is None:
            continue
        yield node
        if isinstance(node, tirx.SeqStmt):
            stack.extend(reversed(list(node.seq)))
            continue
        for attr in ("body", "block", "then_case", "else_case", "init"):
            child = getattr(node, attr, None)
            if isinstance(child, (tirx.Stmt, s_tir.SBlock)):
                stack.append(child)


def _block_realize(sch: s_tir.Schedule, block: SBlockRV) -> s_tir.SBlockRealize:
    stmt = sch.get(block)
    loops = sch.get_loops(block)
    scope = sch.get(loops[-1]) if loops else sch.mod["main"].body
    for node in iter_stmts(scope):
        if isinstance(node, s_tir.SBlockRealize) and node.block.same_as(stmt):
            return node
    raise NotApplicable(f"block {stmt.name_hint} has no realize")


def block_loop_kinds(sch: s_tir.Schedule, block: SBlockRV) -> list[str]:
    """Kind of each loop around ``block``: ``"S"`` spatial, ``"R"`` reduction, ``"M"`` mixed.

    A loop is spatial when its variable only feeds spatial block iterators (or none at all).
    """
    realize = _block_realize(sch, block)
    iter_vars = sch.get(block).iter_vars
    kinds = []
    for loop in sch.get_loops(block):
        var = sch.get(loop).loop_var
        used = set()
        for iv, value in zip(iter_vars, realize.iter_values, strict=True):
            if _uses_var(value, var):
                used.add("R" if iv.iter_type == tirx.IterVar.CommReduce else "S")
        kinds.append("M" if len(used) > 1 else (used.pop() if used else "S"))
    return kinds


def _uses_var(expr: tirx.PrimExpr, var: tirx.Var) -> bool:
    return any(v.same_as(var) for v in undefined_vars(expr))
