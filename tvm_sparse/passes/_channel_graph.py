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
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax

from ._numpy_ops import BINARY, EXACT_UNARY
from .detect_sparsity import constant_weight_of

#: Elementwise unary ops that keep channels, with their numpy reference for constant folding.
_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relax.nn.relu": lambda v: np.maximum(v, 0.0),
    "relax.nn.relu6": lambda v: np.clip(v, 0.0, 6.0),
    "relax.nn.gelu": lambda v: 0.5 * v * (1.0 + np.vectorize(math.erf)(v / math.sqrt(2.0))),
    "relax.nn.gelu_tanh": lambda v: (
        0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))
    ),
    "relax.nn.silu": lambda v: v / (1.0 + np.exp(-v)),
    "relax.sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)),
    "relax.tanh": np.tanh,
    "relax.exp": np.exp,
    **EXACT_UNARY,
    "relax.astype": lambda v: v,
    "relax.nn.dropout": lambda v: v,
}
_BINARY = BINARY
#: Ops whose channel atoms pass straight through with the same layout (NCHW axis 1 kept).
_POOL = {"relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d"}
_REDUCE = {"relax.mean", "relax.sum", "relax.max", "relax.min"}
MAX_ATOMS = 1 << 22


def static_shape(expr: relax.Expr) -> tuple[int | None, ...] | None:
    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    if not isinstance(ty.shape, relax.ShapeExpr):
        return None
    return tuple(int(d) if isinstance(d, tvm.tirx.IntImm) else None for d in ty.shape.values)


class UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def new(self, shape: tuple[int, ...]) -> np.ndarray:
        start = len(self.parent)
        count = int(np.prod(shape, dtype=np.int64))
        self.parent.extend(range(start, start + count))
        return np.arange(start, start + count, dtype=np.int64).reshape(shape)

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(np.ravel(a).tolist(), np.ravel(b).tolist(), strict=True):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def roots(self, ids: np.ndarray) -> np.ndarray:
        flat = np.fromiter((self.find(int(i)) for i in np.ravel(ids)), dtype=np.int64)
        return flat.reshape(ids.shape)


@dataclasses.dataclass
class Chan:
    """Channel atoms of one tensor: ``ids`` and constants ``cv`` over the axes ``axes``."""

    axes: tuple[int, ...]
    ids: np.ndarray
    cv: np.ndarray
    rows_sum_to_one: bool = False  # softmax output along the last axis

    def copy_with(self, **kwargs) -> Chan:
        return dataclasses.replace(self, **kwargs)


@dataclasses.dataclass
class ConsumerEdge:
    """A constant-weight op reading ``tensor``: ``ok`` where a channel may be removed there."""

    binding: relax.Var
    tensor: relax.Var
    ok: np.ndarray


@dataclasses.dataclass
class WeightOp:
    """A matmul / conv2d with a constant weight, in (out, in) orientation."""

    var: relax.Var
    call: relax.Call
    weight: np.ndarray  # matmul: (N, K); conv2d: OIHW
    kind: str  # "matmul" | "conv2d" | "depthwise" | "grouped"
    x: relax.Var


#: ``round_up(op, kept, wanted, kept_in)``: why ``op`` keeps zero output channels up to
#: ``wanted`` rather than shrinking to ``kept`` (it reads ``kept_in`` inputs), or ``None``.
RoundUp = Callable[[WeightOp, int, int, int], "str | None"]


class ChannelGraph:
    """Builds atoms, classes, constants and blockers for one function (top-level bindings)."""

    def __init__(self, func: relax.Function, names: dict[relax.Var, str]) -> None:
        self.func = func
        self.names = names
        self.uf = UnionFind()
        self.chan: dict[relax.Var, Chan] = {}
        self.edges: list[ConsumerEdge] = []
        self.pins: list[tuple[np.ndarray, str]] = []
        self.residual_hints: list[tuple[np.ndarray, str]] = []
        self.weight_ops: dict[relax.Var, WeightOp] = {}
        self.values: dict[relax.Var, relax.Expr] = {}
        self.uses: dict[relax.Var, list[relax.Var | None]] = {}
        self.tuple_fields: dict[relax.Var, list] = {}
        self.bindings: list[tuple[relax.Var, relax.Expr]] = []
        self.supported = True
        self.unsupported_reason = ""
        self._build()

    # --- helpers ---------------------------------------------------------------------------

    def _name(self, var: relax.Var) -> str:
        return self.names.get(var, var.name)

    def _fresh(self, var: relax.Var, axes: tuple[int, ...], reason: str | None = None) -> None:
        shape = static_shape(var)
        if shape is None or any(shape[a] is None for a in axes):
            return
        dims = tuple(shape[a] for a in axes)
        ids = self.uf.new(dims)
        self.chan[var] = Chan(axes, ids, np.full(dims, np.nan))
        if reason:
            self.pins.append((ids, reason))

    def _fresh_pinned(self, var: relax.Var, reason: str) -> None:
        """Atoms of a tensor whose channels cannot change: one pinned atom, no channel axes."""
        if static_shape(var) is not None:
            self._fresh(var, (), reason)

    def _on_axes(self, var: relax.Var, axes: tuple[int, ...]) -> Chan | None:
        """``var``'s atoms laid out on ``axes``; a pinned tensor with other axes gets new ones."""
        c = self.chan.get(var)
        if c is None or c.axes == axes:
            return c
        self._pin_var(var, f"channel layout of {self._name(var)} is not supported here")
        shape = static_shape(var)
        if any(shape[a] is None for a in axes):
            return None
        dims = tuple(shape[a] for a in axes)
        ids = self.uf.new(dims)
        self.pins.append((ids, f"channel layout of {self._name(var)} is not supported here"))
        return Chan(axes, ids, np.full(dims, np.nan))

    def _pin_var(self, var: relax.Expr, reason: str) -> None:
        if isinstance(var, relax.Var) and var in self.chan:
            self.pins.append((self.chan[var].ids, reason))
            for field in self.tuple_fields.get(var, []):
                self._pin_var(field, reason)

    def _pin_args(self, value: relax.Expr, reason: str) -> None:
        for var in _vars_in(value):
            self._pin_var(var, reason)

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
                self._pin_args(value, f"analysis failed on {self._name(var)}: {err}")
                self._fresh_pinned(var, f"analysis failed on {self._name(var)}")
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
            self._pin_args(value, f"packed in tuple {self._name(var)}")
            return
        if isinstance(value, relax.TupleGetItem):
            fields = self.tuple_fields.get(value.tuple_value)
            if fields is not None:
                field = fields[value.index]
                if isinstance(field, relax.Var) and field in self.chan:
                    self.chan[var] = self.chan[field]
                return
            self._pin_args(value, f"tuple item {self._name(var)}")
            self._fresh_pinned(var, f"produced by tuple item {self._name(var)}")
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
        handled = self._visit_call(var, value, op)
        if not handled:
            self._pin_args(value, f"used by {op} ({self._name(var)})")
            self._fresh_pinned(var, f"produced by {op}")

    def _visit_call(self, var: relax.Var, call: relax.Call, op: str) -> bool:
        found = constant_weight_of(call, self.values)
        if found is not None:
            return self._visit_weight_op(var, call, found[1])
        args = call.args
        x = args[0] if args else None
        xc = self.chan.get(x) if isinstance(x, relax.Var) else None
        if op == "relax.permute_dims" and _is_const_like(x, self.values):
            return True  # a weight transposition; only its matmul consumes it
        if op in _UNARY and xc is not None and len(args) == 1:
            self.chan[var] = xc.copy_with(cv=_UNARY[op](xc.cv), rows_sum_to_one=False)
            return True
        if op == "relax.clip" and xc is not None and len(args) == 3:
            # ReLU6 and the hard sigmoid / swish that frontends write with it
            low, high = (_scalar(a) for a in args[1:])
            self.chan[var] = xc.copy_with(cv=np.clip(xc.cv, low, high), rows_sum_to_one=False)
            return True
        if op in _BINARY and len(args) == 2:
            return self._visit_binary(var, call, op)
        if op == "relax.nn.layer_norm" and xc is not None:
            return self._visit_layer_norm(var, call, xc)
        if op in _POOL and xc is not None and xc.axes == (1,):
            if call.attrs.layout != "NCHW" or (call.attrs.out_layout or "NCHW") != "NCHW":
                return False
            cv = xc.cv
            if op == "relax.nn.avg_pool2d" and any(int(p) for p in call.attrs.padding):
                if call.attrs.count_include_pad:
                    cv = np.full_like(cv, np.nan)
            self.chan[var] = xc.copy_with(cv=cv, rows_sum_to_one=False)
            return True
        if op in _REDUCE and xc is not None:
            return self._visit_reduce(var, call, op, xc)
        if op == "relax.reshape" and xc is not None:
            return self._visit_reshape(var, x, xc)
        if op == "relax.permute_dims" and xc is not None:
            return self._visit_permute(var, call, xc)
        if op == "relax.broadcast_to" and xc is not None:
            if static_shape(var) == static_shape(x):
                self.chan[var] = xc
                return True
            return False
        if op == "relax.nn.softmax" and xc is not None:
            shape = static_shape(x)
            axis = int(call.attrs.axis) % len(shape)
            if axis in xc.axes:
                return False
            self.chan[var] = xc.copy_with(
                cv=np.full_like(xc.cv, np.nan), rows_sum_to_one=axis == len(shape) - 1
            )
            return True
        if op == "relax.matmul" and len(args) == 2:
            return self._visit_batched_matmul(var, call)
        if op == "relax.concat":
            return self._visit_concat(var, call)
        return False

    def _visit_weight_op(self, var: relax.Var, call: relax.Call, info: dict) -> bool:
        x = call.args[0]
        if not isinstance(x, relax.Var) or x not in self.chan:
            return False
        shape = static_shape(x)
        if call.op.name == "relax.matmul":
            weight = constant_weight_of(call, self.values)[0]  # (N, K)
            xc = self._on_axes(x, (len(shape) - 1,))
            if xc is None or len(static_shape(var)) != len(shape):
                return False
            col_zero = ~weight.any(axis=0)
            self._edge(var, x, xc, col_zero)
            self.weight_ops[var] = WeightOp(var, call, weight, "matmul", x)
            self._fresh(var, (len(shape) - 1,))
            self.chan[var].cv = _fold_linear(weight, xc.cv)
            return True
        attrs = call.attrs
        if attrs.data_layout != "NCHW" or (attrs.out_layout or "NCHW") != "NCHW":
            return False
        xc = self._on_axes(x, (1,))
        if xc is None:
            return False
        weight = call.args[1].value.numpy()
        groups = int(attrs.groups)
        out_c, cg = weight.shape[:2]
        padded = any(int(p) for p in attrs.padding)
        if groups == 1:
            col_zero = ~weight.any(axis=(0, 2, 3))
            self._edge(var, x, xc, col_zero)
            self.weight_ops[var] = WeightOp(var, call, weight, "conv2d", x)
            self._fresh(var, (1,))
            cv = _fold_linear(weight.sum(axis=(2, 3)), xc.cv)
            if padded:  # a constant input is not uniform at padded borders
                cv[weight.any(axis=(1, 2, 3))] = np.nan
            self.chan[var].cv = cv
            return True
        if cg == 1 and groups == xc.ids.shape[0]:
            mult = out_c // groups
            ids = np.repeat(xc.ids, mult)
            cv = np.repeat(xc.cv, mult) * weight.sum(axis=(1, 2, 3))
            if padded:
                # zero padding breaks a constant at the borders, unless the constant is zero
                cv[weight.any(axis=(1, 2, 3)) & (np.repeat(xc.cv, mult) != 0)] = np.nan
            self.weight_ops[var] = WeightOp(var, call, weight, "depthwise", x)
            self.chan[var] = Chan((1,), ids, cv)
            return True
        # General grouped conv: input channel c of group g feeds output rows of group g only.
        og = out_c // groups
        ok = np.zeros(xc.ids.shape, dtype=bool)
        cv = np.full(out_c, np.nan)
        for g in range(groups):
            rows = weight[g * og : (g + 1) * og]
            ok[g * cg : (g + 1) * cg] = ~rows.any(axis=(0, 2, 3))
            cv[g * og : (g + 1) * og] = _fold_linear(
                rows.sum(axis=(2, 3)), xc.cv[g * cg : (g + 1) * cg]
            )
        if padded:
            cv[weight.any(axis=(1, 2, 3))] = np.nan
        self._edge(var, x, xc, ok)
        self.weight_ops[var] = WeightOp(var, call, weight, "grouped", x)
        self._fresh(var, (1,))
        self.chan[var].cv = cv
        return True

    def _edge(self, var: relax.Var, x: relax.Var, xc: Chan, zero_weight: np.ndarray) -> None:
        if self.chan.get(x) is xc:  # otherwise x is pinned and keeps every channel
            self.edges.append(ConsumerEdge(var, x, zero_weight | ~np.isnan(xc.cv)))

    def _visit_binary(self, var: relax.Var, call: relax.Call, op: str) -> bool:
        a, b = call.args
        fn = _BINARY[op]
        ca = self.chan.get(a) if isinstance(a, relax.Var) else None
        cb = self.chan.get(b) if isinstance(b, relax.Var) else None
        out_shape = static_shape(var)
        if ca is not None and cb is not None:
            # equal shapes, or one broadcast over the other's non-channel axes (the gate of a
            # squeeze-excitation block: N x C x 1 x 1 times N x C x H x W)
            shapes = (static_shape(a), static_shape(b), out_shape)
            same_rank = None not in shapes and len({len(sh) for sh in shapes}) == 1
            if (
                same_rank
                and ca.axes == cb.axes
                and all(len({sh[ax] for sh in shapes}) == 1 for ax in ca.axes)
            ):
                self.uf.union(ca.ids, cb.ids)
                known_a, known_b = ~np.isnan(ca.cv), ~np.isnan(cb.cv)
                self.residual_hints.append(
                    (
                        ca.ids[known_a != known_b],
                        f"channels coupled through {op} ({self._name(var)}) to a branch "
                        "that is not zero",
                    )
                )
                self.chan[var] = Chan(ca.axes, ca.ids, fn(ca.cv, cb.cv))
                return True
            return False
        if ca is None and cb is None:
            return False
        tensor, other, tensor_first = (a, b, True) if ca is not None else (b, a, False)
        tc = ca if ca is not None else cb
        if static_shape(tensor) != out_shape:
            return False
        const = _const_value(other, self.values)
        if const is not None:
            per_channel = _per_channel(const, out_shape, tc.axes)
            if per_channel is False:
                return False
            if per_channel is None:
                cv = np.full_like(tc.cv, np.nan)
            else:
                cv = fn(tc.cv, per_channel) if tensor_first else fn(per_channel, tc.cv)
            self.chan[var] = Chan(tc.axes, tc.ids, cv)
            return True
        # A tensor without atoms on the channel axes (a broadcast scalar) keeps channels.
        other_shape = static_shape(other)
        if other_shape is None or len(other_shape) > len(out_shape):
            return False
        lead = len(out_shape) - len(other_shape)
        if any(ax >= lead and other_shape[ax - lead] != 1 for ax in tc.axes):
            return False
        self._pin_var(other, f"used by {op} ({self._name(var)})")
        self.chan[var] = Chan(tc.axes, tc.ids, np.full_like(tc.cv, np.nan))
        return True

    def _visit_layer_norm(self, var: relax.Var, call: relax.Call, xc: Chan) -> bool:
        """LayerNorm over the channel axis: a channel may leave it when it is a known constant
        at the input (its value still counts in the mean and variance, which the rewrite
        keeps exact); its output is then ``beta`` where ``gamma`` is zero, else unknown."""
        x, gamma, beta = call.args
        shape = static_shape(x)
        if shape is None or None in shape:
            return False
        last = len(shape) - 1
        axes = [int(a) % len(shape) for a in call.attrs.axes]
        gamma = _const_value(gamma, self.values)
        beta = _const_value(beta, self.values)
        if axes != [last] or xc.axes != (last,) or gamma is None or beta is None:
            return False
        gamma = np.broadcast_to(gamma if call.attrs.scale else 1.0, (shape[last],))
        beta = np.broadcast_to(beta if call.attrs.center else 0.0, (shape[last],))
        unknown = np.isnan(xc.cv)
        if unknown.any():
            self.pins.append((xc.ids[unknown], f"read by the statistics of {self._name(var)}"))
        cv = np.where(gamma == 0, beta.astype(np.float64), np.nan)
        self.chan[var] = Chan(xc.axes, xc.ids, cv)
        return True

    def _visit_reduce(self, var: relax.Var, call: relax.Call, op: str, xc: Chan) -> bool:
        shape = static_shape(call.args[0])
        ndim = len(shape)
        axes = call.attrs.axis
        if axes is None:
            return False
        axes = sorted(int(a) % ndim for a in axes)
        if set(axes) & set(xc.axes) or any(shape[a] is None for a in axes):
            return False
        keep = bool(call.attrs.keepdims)
        new_axes = tuple(a if keep else a - sum(r < a for r in axes) for a in xc.axes)
        cv = xc.cv
        if op == "relax.sum":
            cv = cv * float(np.prod([shape[a] for a in axes]))
        self.chan[var] = Chan(new_axes, xc.ids, cv)
        return True

    def _visit_permute(self, var: relax.Var, call: relax.Call, xc: Chan) -> bool:
        ndim = len(static_shape(call.args[0]))
        perm = list(range(ndim))[::-1] if call.attrs.axes is None else list(call.attrs.axes)
        perm = [int(p) % ndim for p in perm]
        new_axes = tuple(j for j in range(ndim) if perm[j] in xc.axes)
        order = [xc.axes.index(perm[j]) for j in new_axes]
        self.chan[var] = Chan(new_axes, xc.ids.transpose(order), xc.cv.transpose(order))
        return True

    def _visit_reshape(self, var: relax.Var, x: relax.Var, xc: Chan) -> bool:
        src, dst = static_shape(x), static_shape(var)
        if src is None or dst is None:
            return False
        groups = _reshape_groups(src, dst)
        if groups is None:
            return False
        chan_groups = [(i, o) for i, o in groups if set(i) & set(xc.axes)]
        in_axes = [a for i, _ in chan_groups for a in i]
        out_axes = tuple(a for _, o in chan_groups for a in o)
        if any(src[a] is None for a in in_axes):
            return False
        full = [src[a] for a in in_axes]
        if int(np.prod(full, dtype=np.int64)) > MAX_ATOMS:
            return False
        view = [src[a] if a in xc.axes else 1 for a in in_axes]
        out_dims = [dst[a] for a in out_axes]
        ids = np.broadcast_to(xc.ids.reshape(view), full).reshape(out_dims)
        cv = np.broadcast_to(xc.cv.reshape(view), full).reshape(out_dims)
        # A size-1 axis never loses channels on its own: drop it from the layout.
        unit = tuple(i for i, d in enumerate(out_dims) if d == 1)
        out_axes = tuple(a for i, a in enumerate(out_axes) if i not in unit)
        self.chan[var] = Chan(out_axes, ids.squeeze(unit), cv.squeeze(unit))
        return True

    def _visit_batched_matmul(self, var: relax.Var, call: relax.Call) -> bool:
        a, b = call.args
        if not (isinstance(a, relax.Var) and isinstance(b, relax.Var)):
            return False
        ca, cb = self.chan.get(a), self.chan.get(b)
        sa, sb, so = static_shape(a), static_shape(b), static_shape(var)
        if ca is None or cb is None or sa is None or sb is None:
            return False
        r = len(sa)
        if len(sb) != r or len(so) != r or sa[:-2] != sb[:-2]:
            return False
        batch_a = tuple(ax for ax in ca.axes if ax < r - 2)
        batch_b = tuple(ax for ax in cb.axes if ax < r - 2)
        if batch_a != batch_b or len(batch_a) > 1:
            return False
        if r - 2 in ca.axes:
            return False  # an atom on a row of A
        if not batch_a:
            if r - 1 in ca.axes or r - 2 in cb.axes or not cb.axes:
                return False  # a contracted atom without a head to remove it with
            cv = cb.cv if ca.rows_sum_to_one else np.full_like(cb.cv, np.nan)
            self.chan[var] = Chan(cb.axes, cb.ids, cv)
            return True
        # Per head: everything of A and B at that head is one class (so contracted atoms go
        # only with the whole head).
        h = batch_a[0]
        ia, ib = ca.axes.index(h), cb.axes.index(h)
        for k in range(ca.ids.shape[ia]):
            group = np.concatenate(
                [np.take(ca.ids, k, axis=ia).ravel(), np.take(cb.ids, k, axis=ib).ravel()]
            )
            self.uf.union(group[:-1], group[1:])
        ids, cv = cb.ids, cb.cv
        if r - 2 in cb.axes:
            j = cb.axes.index(r - 2)
            ids, cv = np.take(ids, 0, axis=j), np.full(np.take(cv, 0, axis=j).shape, np.nan)
        elif not ca.rows_sum_to_one:
            cv = np.full_like(cv, np.nan)
        axes = tuple(ax for ax in cb.axes if ax != r - 2)
        self.chan[var] = Chan(axes, ids, cv)
        return True

    def _visit_concat(self, var: relax.Var, call: relax.Call) -> bool:
        fields = call.args[0]
        if isinstance(fields, relax.Var):
            fields = self.values.get(fields)
        if not isinstance(fields, relax.Tuple):
            return False
        chans = [self.chan.get(f) if isinstance(f, relax.Var) else None for f in fields.fields]
        if any(c is None for c in chans) or len({c.axes for c in chans}) != 1:
            return False
        ndim = len(static_shape(var))
        axis = int(call.attrs.axis) % ndim
        axes = chans[0].axes
        if axis in axes:
            k = axes.index(axis)
            ids = np.concatenate([c.ids for c in chans], axis=k)
            cv = np.concatenate([c.cv for c in chans], axis=k)
            self.chan[var] = Chan(axes, ids, cv)
            return True
        if len({c.ids.shape for c in chans}) != 1:
            return False
        for c in chans[1:]:
            self.uf.union(chans[0].ids, c.ids)
        self.chan[var] = Chan(axes, chans[0].ids, np.full_like(chans[0].cv, np.nan))
        return True

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

        def block(ids: np.ndarray, reason: str) -> None:
            for root in np.unique(self.uf.roots(ids)).tolist():
                reasons.setdefault(root, reason)

        hints: dict[int, str] = {}
        for ids, reason in self.residual_hints:
            for root in np.unique(self.uf.roots(ids)).tolist():
                hints.setdefault(root, reason)
        for edge in self.edges:
            ids = self.chan[edge.tensor].ids[~edge.ok]
            for root in np.unique(self.uf.roots(ids)).tolist():
                reasons.setdefault(
                    root,
                    hints.get(
                        root,
                        f"{self._name(edge.binding)} reads channels that are neither zero-weighted"
                        " nor constant",
                    ),
                )
        for ids, reason in self.pins:
            block(ids, reason)
        all_roots: set[int] = set()
        for c in self.chan.values():
            all_roots.update(np.unique(self.uf.roots(c.ids)).tolist())
        while True:
            removed = all_roots - set(reasons)
            extra = self._constraints(removed)
            if channel_multiple > 1 and not set(extra) & removed:
                extra = self._round_to_multiple(removed, channel_multiple, round_up)
            if not set(extra) & removed:
                return removed, reasons
            for root, reason in extra.items():
                reasons.setdefault(root, reason)

    def keep_mask(self, var: relax.Var, removed: set[int]) -> np.ndarray | None:
        c = self.chan.get(var)
        if c is None:
            return None
        roots = self.uf.roots(c.ids)
        return ~np.isin(roots, list(removed))

    def _round_to_multiple(
        self, removed: set[int], multiple: int, round_up: RoundUp
    ) -> dict[int, str]:
        """Removed classes to keep so that output channel counts are multiples of ``multiple``,
        for the ops where ``round_up`` says so, and always for depthwise convs: their schedule
        vectorises over channels, and a count that is not a whole number of vectors runs in
        narrower vectors or scalars, for far more time than the few zero channels cost."""
        extra: dict[int, str] = {}
        for op in self.weight_ops.values():
            if op.kind not in ("conv2d", "matmul", "depthwise"):
                continue
            roots = self.uf.roots(self.chan[op.var].ids).ravel()
            gone = np.isin(roots, list(removed))
            kept, total = int((~gone).sum()), roots.size
            wanted = -(-kept // multiple) * multiple
            if not gone.any() or kept == wanted or wanted > total:
                continue
            if op.kind == "depthwise":
                reason = (f"kept so that the depthwise {self._name(op.var)} has {wanted} "
                          f"channels, whole vectors of {multiple} (the SIMD width) as its "
                          "schedule needs")  # fmt: skip
            else:
                reason = round_up(op, kept, wanted, self._kept_inputs(op, removed))
            if reason is None:
                continue
            for root in list(dict.fromkeys(roots[gone].tolist()))[: wanted - kept]:
                extra[root] = reason
        return extra

    def _kept_inputs(self, op: WeightOp, removed: set[int]) -> int:
        """How many input channels ``op`` reads once ``removed`` is gone."""
        full = op.weight.shape[1]
        c, keep = self.chan.get(op.x), self.keep_mask(op.x, removed)
        shape = static_shape(op.x)
        if c is None or keep is None or shape is None:
            return full
        axis = 1 if op.kind == "conv2d" else len(shape) - 1
        if axis not in c.axes:
            return full
        i = c.axes.index(axis)
        return int(keep.any(axis=tuple(j for j in range(keep.ndim) if j != i)).sum())

    def _constraints(self, removed: set[int]) -> dict[int, str]:
        extra: dict[int, str] = {}
        for var, c in self.chan.items():
            keep = ~np.isin(self.uf.roots(c.ids), list(removed))
            if keep.all():
                continue
            if not keep.any():
                first = int(self.uf.roots(c.ids.ravel()[:1])[0])
                extra[first] = f"kept one channel so that {self._name(var)} is not empty"
                continue
            others = [tuple(j for j in range(keep.ndim) if j != i) for i in range(keep.ndim)]
            per_axis = [keep.any(axis=o) for o in others]
            if not np.array_equal(_outer(per_axis), keep):
                for root in np.unique(self.uf.roots(c.ids)).tolist():
                    extra[root] = f"removal in {self._name(var)} is not rectangular"
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
                    for root in np.unique(self.uf.roots(self.chan[tensor].ids)).tolist():
                        if root in removed:
                            extra[root] = (
                                f"grouped {self._name(op.var)} would lose unequal channel "
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


def _fold_linear(weight_oi: np.ndarray, cv_in: np.ndarray) -> np.ndarray:
    """Constant of each output row when every input it reads through a nonzero weight is known."""
    known = ~np.isnan(cv_in)
    nonzero = weight_oi != 0
    needs_unknown = (nonzero & ~known[None, :]).any(axis=1)
    values = (weight_oi.astype(np.float64) * np.where(known, cv_in, 0.0)[None, :]).sum(axis=1)
    return np.where(needs_unknown, np.nan, values)


def _per_channel(const: np.ndarray, out_shape, axes) -> np.ndarray | None | bool:
    """Per-channel values of a broadcast constant; None if it varies elsewhere; False if bad."""
    ndim = len(out_shape)
    if const.ndim > ndim:
        return False
    full = const.reshape((1,) * (ndim - const.ndim) + const.shape)
    for ax in range(ndim):
        if full.shape[ax] not in (1, out_shape[ax]):
            return False
    other = tuple(ax for ax in range(ndim) if ax not in axes and full.shape[ax] > 1)
    if other:
        lo, hi = full.min(axis=other, keepdims=True), full.max(axis=other, keepdims=True)
        if not np.array_equal(lo, hi):
            return None
        full = lo
    reduced = full.reshape([full.shape[ax] for ax in axes]) if full.ndim else full
    dims = [out_shape[ax] for ax in axes]
    return np.broadcast_to(reduced.astype(np.float64), dims)


def _scalar(arg: relax.Expr | tvm.tirx.PrimExpr) -> float:
    """A clip bound: an immediate (``FloatImm``), or a ``PrimValue`` holding one."""
    value = arg.value
    return float(value if isinstance(value, int | float) else value.value)


def _const_value(expr: relax.Expr, values) -> np.ndarray | None:
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    return None


def _is_const_like(expr, values) -> bool:
    return isinstance(expr, tvm.ir.GenericConst)


def _reshape_groups(src, dst):
    """Pair contiguous runs of source and target axes with equal products."""
    groups = []
    i = j = 0
    while i < len(src) or j < len(dst):
        gi, gj = [], []
        pi = pj = 1
        if i < len(src):
            gi.append(i)
            pi = src[i]
            i += 1
        if j < len(dst):
            gj.append(j)
            pj = dst[j]
            j += 1
        if pi is None or pj is None:
            if pi is None and pj is None and len(gi) == len(gj) == 1:
                groups.append((tuple(gi), tuple(gj)))
                continue
            return None
        while pi != pj:
            if pi < pj and i < len(src) and src[i] is not None:
                pi *= src[i]
                gi.append(i)
                i += 1
            elif pj < pi and j < len(dst) and dst[j] is not None:
                pj *= dst[j]
                gj.append(j)
                j += 1
            else:
                return None
        # absorb trailing size-1 axes into the same group
        groups.append((tuple(gi), tuple(gj)))
    return groups


def _vars_in(expr: relax.Expr) -> list[relax.Var]:
    found: list[relax.Var] = []

    def visit(e):
        if isinstance(e, relax.Var):
            found.append(e)

    relax.analysis.post_order_visit(expr, visit)
    return found
