"""InjectPrefetch: software prefetch, one iteration ahead, of the buffer a marked loop streams.

A kernel that walks a large weight once per call (the input-channel blocks of a deep conv) waits
on memory wherever the hardware prefetchers fall behind, the usual case in a network whose
weights do not fit the caches. A schedule rule marks the loop whose iterations each read the next
contiguous chunk of such a buffer (``sch.annotate(loop, PREFETCH_ATTR, buffer_name)``).
"""

from __future__ import annotations

import math

import tvm
from tvm import s_tir, tirx
from tvm.sym import Analyzer
from tvm.sym.pattern import detect_linear_equation

from ..schedules.cpu.base import PREFETCH_ATTR, iter_stmts

__all__ = ["PREFETCH_ATTR", "InjectPrefetch"]

_LINE_BYTES = 64
#: Most prefetches issued together.
_LINES_PER_TURN = 4


@tvm.transform.module_pass(opt_level=0, name="InjectPrefetch")
class InjectPrefetch:
    """Prefetch, one iteration ahead, the buffer chunks the loops marked with
    :data:`PREFETCH_ATTR` walk.

    The prefetches are spread over the iterations of the loops just inside the marked one, a few
    at a time between the FMAs: issued all at once they stall the loads the FMAs wait for. They
    go no deeper than needed: inside the loops whose accumulators stay in registers they split
    that nest, a cost paid even when the weights are in cache.

    Before::

        for rc_0 in range(32):                         # T.annotate: tvm_sparse.prefetch = "w"
            for yy_1, rc_1, ry, rx in T.grid(7, 16, 3, 3):
                ... w[fo, rc_0 * 16 + rc_1, ry, rx, f] ...

    After::

        for rc_0 in range(32):
            for yy_1, rc_1 in T.grid(7, 16):           # 288 lines of the next block, 3 a turn
                for t in T.unroll(3):
                    if (yy_1 * 16 + rc_1) * 3 + t < 288:
                        T.prefetch(w_flat[(fo * 512 + min(rc_0 + 1, 31) * 16) * 288 + ...])
                for ry, rx in T.grid(3, 3):
                    ...

    Goes after ``ApplySchedules`` and ``PackWeights`` (the buffer the rule named is then the
    packed weight parameter). The rule vouches that each chunk is contiguous; a marked loop whose
    buffer the pass cannot find, or whose chunks are not a constant distance apart, is left as
    it is.
    """

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updates = {}
        for gvar, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc) and _has_marked_loop(func.body):
                updates[gvar] = func.with_body(_Injector().visit(func.body))
        if not updates:
            return mod
        mod = mod.clone()
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod


def _has_marked_loop(stmt: tirx.Stmt) -> bool:
    return any(isinstance(s, tirx.For) and PREFETCH_ATTR in s.annotations for s in iter_stmts(stmt))


class _Injector:
    """Rebuilds the statements on the way to each marked loop (TVM 0.27 exposes no TIR
    mutator to Python; schedules produce only these statement kinds around loops)."""

    def visit(self, node):
        if isinstance(node, tirx.For):
            body = self.visit(node.body)
            if PREFETCH_ATTR in node.annotations:
                body = _with_prefetch(node, body) or body
            if body.same_as(node.body):
                return node
            return tirx.For(
                node.loop_var, node.min, node.extent, node.kind, body,
                node.thread_binding, node.annotations,
            )  # fmt: skip
        if isinstance(node, tirx.SeqStmt):
            seq = [self.visit(s) for s in node.seq]
            if all(a.same_as(b) for a, b in zip(seq, node.seq, strict=True)):
                return node
            return tirx.SeqStmt(seq)
        if isinstance(node, s_tir.SBlockRealize):
            block = self.visit(node.block)
            if block.same_as(node.block):
                return node
            return s_tir.SBlockRealize(node.iter_values, node.predicate, block)
        if isinstance(node, s_tir.SBlock):
            body = self.visit(node.body)
            if body.same_as(node.body):
                return node
            return s_tir.SBlock(
                node.iter_vars, node.reads, node.writes, node.name_hint, body, node.init,
                node.alloc_buffers, node.match_buffers, node.annotations,
            )  # fmt: skip
        return node


def _with_prefetch(loop: tirx.For, body: tirx.Stmt) -> tirx.Stmt | None:
    """``body`` of the marked ``loop`` with the prefetches inserted, or ``None``."""
    name = str(loop.annotations[PREFETCH_ATTR])
    inner = {s.loop_var: s.min for s in iter_stmts(body) if isinstance(s, tirx.For)}
    for realize in iter_stmts(body):
        if not isinstance(realize, s_tir.SBlockRealize):
            continue
        for region in realize.block.reads:
            buffer = region.source
            if buffer.name == name and all(isinstance(d, tirx.IntImm) for d in buffer.shape):
                return _spread(loop, body, buffer, _chunk_start(buffer, region, realize, inner))
    return None


def _chunk_start(buffer, region, realize, inner) -> tirx.PrimExpr:
    """Flat index of the first element the block reads of ``buffer`` in one iteration of the
    marked loop (the loops inside it at their start)."""
    analyzer = Analyzer()
    for iter_var, value in zip(realize.block.iter_vars, realize.iter_values, strict=True):
        analyzer.bind(iter_var.var, value)
    for var, start in inner.items():
        analyzer.bind(var, start)
    flat, stride = tirx.const(0, "int64"), 1
    for dim, rng in zip(reversed(list(buffer.shape)), reversed(list(region.region)), strict=True):
        flat = flat + tirx.Cast("int64", analyzer.simplify(rng.min)) * stride
        stride *= int(dim)
    return analyzer.simplify(flat)


def _spread(loop: tirx.For, body: tirx.Stmt, buffer, start: tirx.PrimExpr) -> tirx.Stmt | None:
    coeffs = detect_linear_equation(start, [loop.loop_var])
    if len(coeffs) != 2 or not isinstance(coeffs[0], tirx.IntImm) or coeffs[0].value <= 0:
        return None  # chunks not a constant distance apart
    chunk = coeffs[0].value  # elements read per iteration, contiguous in the packed layout
    per_line = _LINE_BYTES * 8 // tvm.DataType(buffer.dtype).bits
    lines = -(-chunk // per_line)
    var = loop.loop_var
    # the next iteration's chunk; the last iteration prefetches its own again
    step = tirx.min(var + 1, loop.min + loop.extent - 1) - var
    next_start = start + tirx.Cast("int64", step) * chunk
    # loops just inside: the prefetches go into the outermost loop that turns often enough for
    # a few lines a turn (deeper, they split the nest whose accumulators stay in registers)
    chain, turns, node = [], 1, body
    while (
        isinstance(node, tirx.For)
        and node.kind == tirx.ForKind.SERIAL
        and turns * _LINES_PER_TURN < lines
    ):
        if not isinstance(node.extent, tirx.IntImm):
            break
        chain.append(node)
        turns *= int(node.extent.value)
        node = node.body
    per_turn = -(-lines // turns)
    turn = tirx.const(0, "int64")
    for outer in chain:
        turn = turn * outer.extent + (outer.loop_var - outer.min)
    size = math.prod(int(dim) for dim in buffer.shape)
    flat = tirx.decl_buffer((size,), buffer.dtype, f"{buffer.name}_flat", data=buffer.data)
    t = tirx.Var("prefetch_t", "int64")
    line = turn * per_turn + t
    address = tirx.call_intrin(
        "handle", "tirx.address_of", tirx.BufferLoad(flat, [next_start + line * per_line])
    )
    prefetch = tirx.Evaluate(tirx.call_intrin("void", "tirx.prefetch", address, 0, 3, 1))
    issue = tirx.For(
        t, tirx.const(0, "int64"), tirx.const(per_turn, "int64"), tirx.ForKind.UNROLLED,
        tirx.IfThenElse(line < lines, prefetch, None),
    )  # fmt: skip
    return _insert_at(body, chain, tirx.SeqStmt([tirx.DeclBuffer(flat, data=buffer.data), issue]))


def _insert_at(body: tirx.Stmt, chain: list[tirx.For], stmt: tirx.Stmt) -> tirx.Stmt:
    """``body`` with ``stmt`` first in the body of the innermost loop of ``chain``."""
    if not chain:
        return tirx.SeqStmt([stmt, body])
    outer, rest = chain[0], chain[1:]
    return tirx.For(
        outer.loop_var, outer.min, outer.extent, outer.kind, _insert_at(outer.body, rest, stmt),
        outer.thread_binding, outer.annotations,
    )  # fmt: skip
