"""Channel dependency analysis behind ``ShrinkPrunedChannels``.

Every channel of every tensor is an *atom*; ops that carry channels through unchanged
(activations and clip, bias add, batch-norm arithmetic, pooling, reshape, permute, residual add,
gating multiply, concat, depthwise conv, per-head attention matmuls) put the atoms they connect
into one class with a union-find, Torch-Pruning's DepGraph on a Relax function. A class is
removed as a whole, and only when every place where its values leave the class can do without
them:

* a consumer ``matmul`` / ``conv2d`` with a constant weight reads the channel through an
  all-zero weight column, or the channel holds a known per-channel constant there (the
  consumer then gets an exact correction: into its bias, or for a padded conv a constant map);
* nothing else sees it: function inputs and outputs, and ops the analysis does not know, pin
  their atoms with a reason.

Forward constant propagation gives each atom its per-channel constant (NaN when unknown): a
zero weight row gives 0, a bias add gives the bias, ReLU(bias) is evaluated with numpy, and so on.
How each op does this is its rule, in the ``_channel_*.py`` module named after its op family.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax

from ._channel_atoms import ChannelAtoms, static_shape
from ._channel_attention import RULES as ATTENTION_RULES
from ._channel_elementwise import RULES as ELEMENTWISE_RULES
from ._channel_layer_norm import RULES as LAYER_NORM_RULES
from ._channel_layout import RULES as LAYOUT_RULES
from ._channel_rounding import RoundUp, round_to_multiple
from ._channel_weights import visit_weight_op
from .detect_sparsity import constant_weight_of

#: ``rule(graph, var, call)``: gives ``var`` its atoms and returns True, or False to pin them.
Rule = Callable[[ChannelAtoms, relax.Var, relax.Call], bool]
_RULES: dict[str, Rule] = {
    **ELEMENTWISE_RULES,
    **LAYOUT_RULES,
    **LAYER_NORM_RULES,
    **ATTENTION_RULES,
}


class ChannelGraph(ChannelAtoms):
    """Builds atoms, classes, constants and blockers for one function (top-level bindings)."""

    def __init__(self, func: relax.Function, names: dict[relax.Var, str]) -> None:
        super().__init__(names)
        self.func = func
        self.bindings: list[tuple[relax.Var, relax.Expr]] = []
        self.supported = True
        self.unsupported_reason = ""
        self._build()

    def _fresh_pinned(self, var: relax.Var, reason: str) -> None:
        """Atoms of a tensor whose channels cannot change: one pinned atom, no channel axes."""
        if static_shape(var) is not None:
            self.fresh(var, (), reason)

    def _pin_args(self, value: relax.Expr, reason: str) -> None:
        for var in _vars_in(value):
            self.pin_var(var, reason)

    # --- graph construction ----------------------------------------------------------------

    def _build(self) -> None:
        body = self.func.body
        if not isinstance(body, relax.SeqExpr):
            self.supported, self.unsupported_reason = False, "function body is not a SeqExpr"
            return
        for param in self.func.params:
            self._fresh_pinned(param, "function input")
        for block in body.blocks:
            for binding in block.bindings:
                self.bindings.append((binding.var, binding.value))
                self.values[binding.var] = binding.value
                if not isinstance(binding, relax.VarBinding):
                    self._pin_args(binding.value, "match_cast")
                    self._fresh_pinned(binding.var, "match_cast")
                    continue
                for used in _vars_in(binding.value):
                    self.uses.setdefault(used, []).append(binding.var)
        for used in _vars_in(body.body):
            self.uses.setdefault(used, []).append(None)
        for var, value in self.bindings:
            if var in self.chan:
                continue
            try:
                self._visit(var, value)
            except Exception as err:  # noqa: BLE001 - never raise on an odd graph
                self._pin_args(value, f"analysis failed on {self.name_of(var)}: {err}")
                self._fresh_pinned(var, f"analysis failed on {self.name_of(var)}")
        self._pin_args(body.body, "reaches the function output")

    def _visit(self, var: relax.Var, value: relax.Expr) -> None:
        if isinstance(value, tvm.ir.GenericConst):
            return  # constants carry no atoms; uses slice them
        if isinstance(value, relax.Tuple):
            self.tuple_fields[var] = list(value.fields)
            if all(
                isinstance(self.values.get(u), relax.TupleGetItem) for u in self.uses.get(var, [])
            ):
                return
            self._pin_args(value, f"packed in tuple {self.name_of(var)}")
            return
        if isinstance(value, relax.TupleGetItem):
            fields = self.tuple_fields.get(value.tuple_value)
            if fields is not None:
                field = fields[value.index]
                if isinstance(field, relax.Var) and field in self.chan:
                    self.chan[var] = self.chan[field]
                return
            self._pin_args(value, f"tuple item {self.name_of(var)}")
            self._fresh_pinned(var, f"produced by tuple item {self.name_of(var)}")
            return
        if isinstance(value, relax.Var):
            if value in self.chan:
                self.chan[var] = self.chan[value]
            return
        if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
            what = type(value).__name__
            self._pin_args(value, f"used by {what}")
            self._fresh_pinned(var, f"produced by {what}")
            return
        op = value.op.name
        found = constant_weight_of(value, self.values)
        if found is not None:
            handled = visit_weight_op(self, var, value, found[0])
        else:
            rule = _RULES.get(op)
            handled = rule is not None and rule(self, var, value)
        if not handled:
            self._pin_args(value, f"used by {op} ({self.name_of(var)})")
            self._fresh_pinned(var, f"produced by {op}")

    # --- decision ----------------------------------------------------------------------------

    def removable_roots(
        self, channel_multiple: int = 1, round_up: RoundUp | None = None
    ) -> tuple[set[int], dict[int, str]]:
        """Classes that can be removed, and for blocked classes the first reason why not.

        With ``channel_multiple > 1``, an op whose kept output channels are not a multiple of it
        (dense conv2d / matmul ops that have that many channels) asks ``round_up(op, kept,
        wanted, kept_in)``: a reason to keep zero channels up to ``wanted``, or ``None`` to
        shrink to ``kept`` exactly.
        """
        if channel_multiple > 1 and round_up is None:
            raise ValueError("channel_multiple > 1 needs round_up to decide each op's rounding")
        reasons: dict[int, str] = {}
        hints: dict[int, str] = {}
        for ids, reason in self.residual_hints:
            for root in self.uf.classes(ids):
                hints.setdefault(root, reason)
        for edge in self.edges:
            ids = self.chan[edge.tensor].ids[~edge.ok]
            for root in self.uf.classes(ids):
                reasons.setdefault(
                    root,
                    hints.get(
                        root,
                        f"{self.name_of(edge.binding)} reads channels that are neither"
                        " zero-weighted nor constant",
                    ),
                )
        for ids, reason in self.pins:
            for root in self.uf.classes(ids):
                reasons.setdefault(root, reason)
        all_roots: set[int] = set()
        for c in self.chan.values():
            all_roots.update(self.uf.classes(c.ids))
        while True:
            removed = all_roots - set(reasons)
            extra = self._constraints(removed)
            if channel_multiple > 1 and not set(extra) & removed:
                extra = round_to_multiple(self, removed, channel_multiple, round_up)
            if not set(extra) & removed:
                return removed, reasons
            for root, reason in extra.items():
                reasons.setdefault(root, reason)

    def _constraints(self, removed: set[int]) -> dict[int, str]:
        extra: dict[int, str] = {}
        for var, c in self.chan.items():
            keep = ~np.isin(self.uf.roots(c.ids), list(removed))
            if keep.all():
                continue
            if not keep.any():
                first = int(self.uf.roots(c.ids.ravel()[:1])[0])
                extra[first] = f"kept one channel so that {self.name_of(var)} is not empty"
                continue
            others = [tuple(j for j in range(keep.ndim) if j != i) for i in range(keep.ndim)]
            per_axis = [keep.any(axis=o) for o in others]
            if not np.array_equal(_outer(per_axis), keep):
                for root in self.uf.classes(c.ids):
                    extra[root] = f"removal in {self.name_of(var)} is not rectangular"
        for op in self.weight_ops.values():
            if op.kind != "grouped":
                continue
            groups = int(op.call.attrs.groups)
            for tensor in (op.x, op.var):
                if self.chan[tensor].axes != (1,):
                    continue
                keep = ~np.isin(self.uf.roots(self.chan[tensor].ids), list(removed))
                counts = keep.reshape(groups, -1).sum(axis=1)
                if len(set(counts.tolist())) > 1:
                    for root in self.uf.classes(self.chan[tensor].ids):
                        if root in removed:
                            extra[root] = (
                                f"grouped {self.name_of(op.var)} would lose unequal channel "
                                "counts per group"
                            )
        return extra


def _outer(masks: list[np.ndarray]) -> np.ndarray:
    out = np.ones([len(m) for m in masks], dtype=bool)
    for i, m in enumerate(masks):
        shape = [1] * len(masks)
        shape[i] = len(m)
        out = out & m.reshape(shape)
    return out


def _vars_in(expr: relax.Expr) -> list[relax.Var]:
    found: list[relax.Var] = []

    def visit(e):
        if isinstance(e, relax.Var):
            found.append(e)

    relax.analysis.post_order_visit(expr, visit)
    return found
