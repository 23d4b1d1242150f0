"""Channel atoms of a Relax function's tensors and the union-find that groups them into classes.

The state that ``ChannelGraph`` builds and the per-op channel rules (``_channel_*.py``) extend:
each rule reads the atoms of an op's inputs, gives its output atoms, couples atoms into one class,
and pins the atoms that must stay.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm import relax


def static_shape(expr: relax.Expr) -> tuple[int | None, ...] | None:
    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    if not isinstance(ty.shape, relax.ShapeExpr):
        return None
    return tuple(int(d) if isinstance(d, tvm.tirx.IntImm) else None for d in ty.shape.values)


def const_value(expr: relax.Expr) -> np.ndarray | None:
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    return None


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

    def classes(self, ids: np.ndarray) -> list[int]:
        """The distinct roots of ``ids``, ascending."""
        return np.unique(self.roots(ids)).tolist()


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


class ChannelAtoms:
    """Atoms, classes, constants and blockers of one function, as the channel rules leave them."""

    def __init__(self, names: dict[relax.Var, str]) -> None:
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

    def name_of(self, var: relax.Var) -> str:
        return self.names.get(var, var.name)

    def chan_of(self, expr: relax.Expr | None) -> Chan | None:
        return self.chan.get(expr) if isinstance(expr, relax.Var) else None

    def fresh(self, var: relax.Var, axes: tuple[int, ...], reason: str | None = None) -> None:
        """New atoms for ``var`` over ``axes``, pinned with ``reason`` if one is given."""
        shape = static_shape(var)
        if shape is None or any(shape[a] is None for a in axes):
            return
        dims = tuple(shape[a] for a in axes)
        ids = self.uf.new(dims)
        self.chan[var] = Chan(axes, ids, np.full(dims, np.nan))
        if reason:
            self.pins.append((ids, reason))

    def on_axes(self, var: relax.Var, axes: tuple[int, ...]) -> Chan | None:
        """``var``'s atoms laid out on ``axes``; a pinned tensor with other axes gets new ones."""
        c = self.chan.get(var)
        if c is None or c.axes == axes:
            return c
        self.pin_var(var, f"channel layout of {self.name_of(var)} is not supported here")
        shape = static_shape(var)
        if any(shape[a] is None for a in axes):
            return None
        dims = tuple(shape[a] for a in axes)
        ids = self.uf.new(dims)
        self.pins.append((ids, f"channel layout of {self.name_of(var)} is not supported here"))
        return Chan(axes, ids, np.full(dims, np.nan))

    def pin_var(self, var: relax.Expr, reason: str) -> None:
        if isinstance(var, relax.Var) and var in self.chan:
            self.pins.append((self.chan[var].ids, reason))
            for field in self.tuple_fields.get(var, []):
                self.pin_var(field, reason)

    def add_edge(self, var: relax.Var, x: relax.Var, xc: Chan, zero_weight: np.ndarray) -> None:
        """``var`` reads ``x`` through a constant weight whose ``zero_weight`` columns are 0."""
        if self.chan.get(x) is xc:  # otherwise x is pinned and keeps every channel
            self.edges.append(ConsumerEdge(var, x, zero_weight | ~np.isnan(xc.cv)))

    def keep_mask(self, var: relax.Var, removed: set[int]) -> np.ndarray | None:
        c = self.chan.get(var)
        if c is None:
            return None
        roots = self.uf.roots(c.ids)
        return ~np.isin(roots, list(removed))
