"""Search spaces: the knobs the default schedules expose, and the workload keys of the cache.

Sparse kernels
    Their knobs (``BSRMatmulKnobs``, ``NMMatmulKnobs``) are Python-level: the TVMScript is
    generated from them. :func:`sparse_spec` recovers from a
    generated PrimFunc the arguments it was generated with (checked by regenerating it), and
    :func:`sparse_candidates` lists the knob sets that keep the kernel's signature, so a tuned
    kernel replaces the default one in place: the register tile ``m_tile``, the block rows per
    task ``row_block`` of the ``rows`` variant, the store group
    ``group`` where it divides the stored rows, the vector width of the ``gemv`` variant. The
    variant itself (``rows`` / ``m`` / ``gemv``) is not searched: it changes the layout of the
    operands, which ``RewriteToSparse`` decides.
Dense ops
    The space of a dense PrimFunc is the knobs of the CPU rule that schedules it by default
    (:func:`tunable_rule`: ``Matmul``, ``Conv2dNHWC``, ``Conv2d``, ``GEMV``): each rule can
    draw its knobs with a ``KnobSampler``, one ``sample_categorical`` per knob, over the values
    valid for the workload with the rule's default first: register tiles within the register
    file, factors that divide the loops they split, the schedule's path (pointwise,
    output-channel or column tiles for an NCHW conv), channel blocks, padding and weight
    packing. :func:`rule_space` runs the rule once per
    decision vector (the default schedule is the first point) and MetaSchedule's evolutionary
    search with its XGBoost cost model picks among those schedules, one design space each:
    MetaSchedule replays traces and cannot re-draw a decision that steered the rule's Python.
    A tuned record is that rule's schedule with other knobs, and replays to it. A PrimFunc that
    no knob-sampling rule claims is searched in MetaSchedule's own design space
    (:data:`METASCHEDULE_SPACE`: ``PostOrderApply`` with the default llvm rules). Either way
    the default schedule is measured first under the same builder and runner, and a tuned
    schedule is used only when it beats it (:data:`~tvm_sparse.tune.cache.MIN_GAIN`), so
    tuning never makes an op slower.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.target import Target

from ..kernels.bsr_matmul import BSRMatmulKnobs, bsr_matmul
from ..kernels.epilogue import EPILOGUE_ATTR, Epilogue
from ..kernels.nm_matmul import NMMatmulKnobs, nm_matmul
from ..kernels.nm_permute import NMPermuteKnobs, nm_permute
from ..schedules import schedule_rules
from ..schedules.apply_schedules import KERNEL_ATTR
from ..schedules.cpu.base import CPUScheduleRule, iter_stmts
from ..targets.facts import vector_lanes

__all__ = [
    "METASCHEDULE_SPACE",
    "DesignPoint",
    "SparseSpec",
    "canonical_knobs",
    "dense_workload_key",
    "is_dense_tunable",
    "rule_space",
    "sparse_candidates",
    "sparse_spec",
    "sparse_workload_key",
    "tunable_rule",
]

KNOBS_ATTR = "tvm_sparse.knobs"
#: The ``"space"`` of dense records searched in MetaSchedule's own design space (the others
#: name the rule whose knobs were searched).
METASCHEDULE_SPACE = "post-order-apply"
_BSR = re.compile(r"^bsr_matmul\[(\d+)x(\d+)\]")
_NM = re.compile(r"^nm_matmul\[(\d+):(\d+)\]")


@dataclass(frozen=True)
class SparseSpec:
    """The generator arguments of a sparse kernel, without its knobs."""

    kernel: str  # "bsr", "nm" or "nm_permute"
    name: str
    m: int
    k: int
    n: int
    pattern: tuple[int, int]  # block (r, c) or (N, M)
    stored: int  # nnzb (BSR), rows of values (N:M) or blocks of outputs (N:M permute)
    block_rows: int = 0
    batch: int = 1
    x_layout: str = "MK"
    y_layout: str = "MN"
    dtype: str = "float32"
    #: Positions of the index arrays among the kernel's parameters (they key the workload).
    index_args: tuple[int, ...] = ()
    #: What the kernel applies as it stores (:attr:`Epilogue.attr`; empty for nothing).
    epilogue: str = ""

    def build(self, knobs: dict) -> tirx.PrimFunc:
        """The kernel generated with ``knobs`` (a dict as in the ``tvm_sparse.knobs`` attr)."""
        if self.kernel == "nm_permute":
            knobs = {key: value for key, value in knobs.items() if key != "variant"}
            return nm_permute(
                self.m,
                self.k,
                self.n,
                self.pattern,
                knobs=NMPermuteKnobs(**knobs),
                dtype=self.dtype,
                epilogue=Epilogue.from_attr(self.epilogue),
            )
        if self.kernel == "nm":
            return nm_matmul(
                self.m,
                self.k,
                self.n,
                self.pattern,
                self.stored,
                knobs=NMMatmulKnobs(**knobs),
                dtype=self.dtype,
                epilogue=Epilogue.from_attr(self.epilogue),
            )
        return bsr_matmul(
            self.m,
            self.k,
            self.n,
            self.pattern,
            self.stored,
            self.block_rows,
            knobs=BSRMatmulKnobs(**knobs),
            batch=self.batch,
            x_layout=self.x_layout,
            y_layout=self.y_layout,
            dtype=self.dtype,
            epilogue=Epilogue.from_attr(self.epilogue),
        )


def _shapes(func: tirx.PrimFunc) -> list[tuple[int, ...]]:
    return [tuple(int(d) for d in p.ty.shape) for p in func.params]


def _knobs_of(func: tirx.PrimFunc) -> dict | None:
    attrs = func.attrs
    if attrs is None or KNOBS_ATTR not in attrs or KERNEL_ATTR not in attrs:
        return None
    return {
        str(k): (str(v) if isinstance(v, str) else int(v)) for k, v in attrs[KNOBS_ATTR].items()
    }


def sparse_spec(func: tirx.PrimFunc) -> SparseSpec | None:
    """Recover the generator arguments of a project sparse kernel, or ``None``.

    Every reading of the buffer shapes that fits is regenerated with the function's own knobs;
    the one that reproduces ``func`` exactly wins, so a kernel this module does not understand
    is left alone rather than replaced by a different computation.
    """
    knobs = _knobs_of(func)
    if knobs is None:
        return None
    name = str(func.attrs[KERNEL_ATTR]).removesuffix(" (tuned)")
    try:
        shapes = _shapes(func)
        dtype = str(func.params[0].ty.dtype)
    except (TypeError, ValueError, AttributeError):
        return None  # symbolic shapes
    epilogue = Epilogue.from_attr(func.attrs.get(EPILOGUE_ATTR, ""))
    if epilogue.bias:  # the (n,) bias sits before the output
        shapes = [*shapes[:-2], shapes[-1]]
    for spec in _readings(name, shapes, knobs, dtype):
        spec = dataclasses.replace(spec, epilogue=epilogue.attr)
        try:
            again = spec.build(knobs)
        except Exception:  # noqa: BLE001 - a generator refusing these arguments: not this reading
            continue
        if tvm_ffi.structural_equal(
            keep_extra_attrs(again, func).without_attr(KERNEL_ATTR), func.without_attr(KERNEL_ATTR)
        ):
            return spec
    return None


def keep_extra_attrs(new: tirx.PrimFunc, old: tirx.PrimFunc) -> tirx.PrimFunc:
    """``new`` with the attributes of ``old`` that the generator does not set (e.g. FLOPs)."""
    for key, value in (old.attrs or {}).items():
        if new.attrs is None or key not in new.attrs:
            new = new.with_attr(key, value)
    return new


def _readings(name: str, shapes, knobs: dict, dtype: str) -> list[SparseSpec]:
    """The generator arguments that the buffer shapes could stand for; none where the ranks are
    not those the CPU generators write (the CUDA kernels of the same names take a batched
    ``(1, M, K)`` input, for one)."""
    ranks = [len(s) for s in shapes]
    if (match := _NM.match(name)) and ranks == [2, 4, 4, 2]:
        (m, k), (tasks, _, group, _), _, (_, n) = shapes
        nm = (int(match[1]), int(match[2]))
        return [SparseSpec("nm", name, m, k, n, nm, tasks * group, dtype=dtype, index_args=(2,))]
    if match and ranks == [2, 5, 5, 2] and knobs.get("variant") == "permute":
        (m, k), (blocks, *_), _, (_, n) = shapes
        nm = (int(match[1]), int(match[2]))
        spec = SparseSpec("nm_permute", name, m, k, n, nm, blocks, dtype=dtype, index_args=(2,))
        return [spec]
    if not (match := _BSR.match(name)) or len(shapes) != 5:
        return []
    if ranks[0] not in (2, 3) or ranks[1:] != [3, 1, 1, ranks[0]]:
        return []
    block = (int(match[1]), int(match[2]))
    x, _, (nnzb,), (indptr,), y = shapes
    common = dict(kernel="bsr", name=name, pattern=block, stored=nnzb, block_rows=indptr - 1)
    common.update(dtype=dtype, index_args=(2, 3))
    if len(x) == 2:  # "rows" and "gemv": (M, K) in, (M, N) out
        return [SparseSpec(m=x[0], k=x[1], n=y[1], **common)]
    out = []
    (batch, p, q), (_, u, v) = x, y
    for x_layout, y_layout in (("MK", "MN"), ("KM", "NM"), ("MK", "NM"), ("KM", "MN")):
        m, k = (p, q) if x_layout == "MK" else (q, p)
        n = v if y_layout == "MN" else u
        if (u if y_layout == "MN" else v) == m:
            out.append(
                SparseSpec(
                    m=m, k=k, n=n, batch=batch, x_layout=x_layout, y_layout=y_layout, **common
                )
            )
    return out


def sparse_candidates(spec: SparseSpec, knobs: dict, target: Target) -> list[dict]:
    """Knob sets to try for ``spec``: the default ``knobs`` first, then signature-keeping ones.

    Each candidate is generated once here; ones the generator refuses are left out.
    """
    lanes = int(knobs.get("lanes", vector_lanes(target)))
    options: list[dict] = []
    if spec.kernel == "nm_permute":  # the rows of a register tile keep the weight's layout
        options = [{"rows": r} for r in (2, 4, 6, 8, 10, 12)]
    elif spec.kernel == "nm":  # the group and k tile keep the weight's layout
        tiles = [lanes, 2 * lanes, 4 * lanes, 8 * lanes, 16 * lanes]
        options = [{"m_tile": t, "unroll": u} for t in tiles for u in (1, 2)]
    elif knobs.get("variant") == "gemv":
        options = [{"lanes": v} for v in (4, 8, 16, 32, 64)]
    elif knobs.get("variant") == "rows":
        options = [
            {"m_tile": t, "row_block": b} for t in (2, 4, 6, 8, 12, 16, 24) for b in (1, 4, 16)
        ]
    else:
        tiles = [lanes // 2, lanes, 2 * lanes, 3 * lanes, 4 * lanes, 8 * lanes]
        groups = [1] if spec.y_layout == "NM" else [1, 2, 4, 8, 16]
        groups = [g for g in groups if spec.block_rows % g == 0]
        splits = ["rows", "outputs"] if spec.x_layout == "KM" else ["rows"]
        options = [{"m_tile": t, "group": g, "split": s}
                   for t in tiles for g in groups for s in splits]  # fmt: skip
    out, seen = [dict(knobs)], {canonical_knobs(knobs)}
    for option in options:
        cand = {**knobs, **option}
        if cand.get("m_tile", 1) > spec.m or cand.get("m_tile", 1) < 1:
            continue
        if canonical_knobs(cand) in seen:
            continue
        try:
            built = spec.build(cand)
        except (ValueError, TypeError, ZeroDivisionError):
            continue
        # ``resolve`` may clamp a knob; keep the knobs the kernel really got.
        actual = _knobs_of(built) or cand
        if canonical_knobs(actual) not in seen:
            seen.add(canonical_knobs(actual))
            out.append(actual)
    return out


def canonical_knobs(knobs: dict) -> str:
    """``knobs`` as one string, equal for equal knob sets (a key of sets and dicts)."""
    return json.dumps(knobs, sort_keys=True)


def _digest(*parts: bytes) -> str:
    h = hashlib.sha1()
    for part in parts:
        h.update(part)
    return h.hexdigest()[:20]


def sparse_workload_key(spec: SparseSpec, index_arrays: Sequence[np.ndarray]) -> str:
    """Kernel, shapes and the hash of the nonzero pattern (the index arrays, not the values)."""
    fields = {k: v for k, v in asdict(spec).items() if k != "index_args"}
    if not fields["epilogue"]:  # keys of plain kernels from before epilogues existed
        del fields["epilogue"]
    head = json.dumps(fields, sort_keys=True).encode()
    return "sparse:" + _digest(head, *(np.ascontiguousarray(a).tobytes() for a in index_arrays))


def dense_workload_key(func: tirx.PrimFunc) -> str:
    """The structural hash of the PrimFunc (as ``ApplySchedules`` would receive it)."""
    return f"dense:{tvm_ffi.structural_hash(func) & 0xFFFFFFFFFFFFFFFF:016x}"


def is_dense_tunable(func: tirx.PrimFunc) -> bool:
    """Whether a dense PrimFunc is worth tuning: static shapes and a reduction (matmul, conv).

    Elementwise and layout kernels are memory bound; the default schedules already vectorise
    and parallelise them, and tuning them would spend trials for nothing.
    """
    if func.attrs is not None and func.attrs.get("tirx.is_scheduled", False):
        return False
    if any(not isinstance(d, tirx.IntImm) for p in func.params for d in p.ty.shape):
        return False
    return any(
        isinstance(node, s_tir.SBlockRealize)
        and any(iv.iter_type == tirx.IterVar.CommReduce for iv in node.block.iter_vars)
        for node in iter_stmts(func.body)
    )


@dataclass
class DesignPoint:
    """One point of a rule's knob space: the decisions, the knob values they drew, the schedule."""

    decisions: tuple[int, ...]
    knobs: dict[str, int]
    sch: s_tir.Schedule


def tunable_rule(func: tirx.PrimFunc, target: Target) -> CPUScheduleRule | None:
    """The rule that schedules ``func`` by default if it samples its knobs, else ``None``."""
    for rule in schedule_rules(target):
        try:
            applied = rule.apply(func, target, False)
        except Exception:  # noqa: BLE001 - as ApplySchedules does: the next rule schedules it
            continue
        if applied is not None:
            samples = getattr(rule, "samples_knobs", False)
            return rule if samples and rule.sample(func, target) is not None else None
    return None


def rule_space(
    rule: CPUScheduleRule, func: tirx.PrimFunc, target: Target, *, limit: int = 256
) -> list[DesignPoint]:
    """The points of ``rule``'s knob space for ``func``, the default schedule first.

    The rule draws its knobs one after the other, and which knobs come next (and their
    candidates) may depend on the values drawn before, so the space is a tree: each run of
    :meth:`~tvm_sparse.schedules.cpu.CPUScheduleRule.sample` fixes a prefix of decisions, takes
    the defaults after it and reveals the knobs there, whose other candidates become the
    prefixes of further runs. One run per point; schedules equal to an earlier one are dropped.
    Past ``limit`` points the rest is left out (the order is a fixed shuffle, so the points kept
    spread over the space).
    """
    rng = random.Random(0)
    points: list[DesignPoint] = []
    seen: set[int] = set()
    pending: list[tuple[int, ...]] = [()]
    while pending and len(points) < limit:
        prefix = pending.pop()
        sampled = rule.sample(func, target, prefix)
        if sampled is None:
            continue
        sch, sampler = sampled
        digest = tvm_ffi.structural_hash(sch.mod)
        if digest not in seen:
            seen.add(digest)
            points.append(DesignPoint(tuple(sampler.taken), sampler.knobs, sch))
        zeros = (0,) * (len(sampler.candidates) - len(prefix))
        children = [
            (*prefix, *zeros[: pos - len(prefix)], other)
            for pos in range(len(prefix), len(sampler.candidates))
            for other in range(1, len(sampler.candidates[pos]))
        ]
        rng.shuffle(children)
        pending.extend(children)
    return points


@dataclass
class SparseSite:
    """One call of a project sparse kernel with its constant operands."""

    gvar: tvm.ir.GlobalVar
    func: tirx.PrimFunc
    spec: SparseSpec
    knobs: dict
    #: One entry per kernel parameter: the constant operand, or ``None`` (activations, output).
    arrays: list[np.ndarray | None]

    @property
    def key(self) -> str:
        return sparse_workload_key(self.spec, [self.arrays[i] for i in self.spec.index_args])


def _unreadable(func: tirx.PrimFunc) -> str | None:
    """Why ``func``, named as a project sparse matmul, is no kernel :func:`sparse_spec` reads
    (``None`` for other functions, and for symbolic shapes, which are never tuned)."""
    name = str((func.attrs or {}).get(KERNEL_ATTR, ""))
    knobs = _knobs_of(func)
    if knobs is None or not (_NM.match(name) or _BSR.match(name)):
        return None
    try:
        shapes = _shapes(func)
    except (TypeError, ValueError, AttributeError):
        return None
    return f"no CPU kernel the tuner generates has its buffer shapes {shapes} and knobs {knobs}"


def sparse_sites(
    mod: tvm.IRModule, on_skip: Callable[[str, str], None] | None = None
) -> list[SparseSite]:
    """Every ``call_tir`` of a sparse kernel whose index arrays are constants of the module.

    ``on_skip(function name, reason)`` hears of each function named as a sparse kernel that
    cannot be read (its shapes fit no generator, or reading it failed): it is left as it is.
    """
    from tvm import relax

    call_tir = tvm.ir.Op.get("relax.call_tir")
    specs: dict[str, tuple[SparseSpec, dict] | None] = {}
    sites = []
    for _, func in mod.functions_items():
        if not isinstance(func, relax.Function) or not isinstance(func.body, relax.SeqExpr):
            continue
        for block in func.body.blocks:
            for binding in block.bindings:
                call = binding.value
                if not (isinstance(call, relax.Call) and call.op == call_tir):
                    continue
                gvar = call.args[0]
                if gvar.name_hint not in specs:
                    specs[gvar.name_hint] = _read_kernel(mod[gvar], gvar.name_hint, on_skip)
                if specs[gvar.name_hint] is None:
                    continue
                spec, knobs = specs[gvar.name_hint]
                args = list(call.args[1].fields)
                arrays = [a.value.numpy() if isinstance(a, tvm.ir.Constant) else None for a in args]
                if any(arrays[i] is None for i in spec.index_args):
                    continue
                sites.append(SparseSite(gvar, mod[gvar], spec, knobs, [*arrays, None]))
    return sites


def _read_kernel(prim, name: str, on_skip) -> tuple[SparseSpec, dict] | None:
    if not isinstance(prim, tirx.PrimFunc):
        return None
    try:
        spec = sparse_spec(prim)
        reason = _unreadable(prim) if spec is None else None
    except Exception as err:  # noqa: BLE001 - one unreadable kernel must not stop the others
        spec, reason = None, f"reading it failed ({type(err).__name__}: {err})"
    if reason is not None and on_skip is not None:
        on_skip(name, reason)
    return (spec, _knobs_of(prim)) if spec is not None else None
