"""Detect the sparsity structure of constant weights and record it on the function.

``DetectSparsity`` only reads the IR; rewriting passes (``ShrinkPrunedChannels``,
``RewriteToSparse``) act on what it records under the function attribute
``"tvm_sparse.weights"``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tvm
from tvm import relax
from tvm.ir import IRModule

from ._bindings import function_bindings, unique_binding_names, with_functions

__all__ = [
    "BLOCK_TOLERANCE",
    "DEFAULT_BLOCKS",
    "DEFAULT_NM",
    "WEIGHTS_ATTR",
    "DetectSparsity",
    "WeightSparsity",
    "analyze_weight",
    "constant_weight_of",
    "unique_binding_names",
]

WEIGHTS_ATTR = "tvm_sparse.weights"

#: Candidate blocks as ``(rows_of_out, cols_of_in)`` of the ``(out, in)`` weight matrix.
DEFAULT_BLOCKS: tuple[tuple[int, int], ...] = (
    (1, 1),
    (1, 4),
    (4, 1),
    (8, 1),
    (16, 1),
    (32, 1),
    (4, 4),
    (16, 16),
)
DEFAULT_NM: tuple[tuple[int, int], ...] = ((2, 4), (4, 8))

#: A block shape is accepted when storing its nonzero blocks densely stores at most this
#: fraction more values than there are nonzeros (explicit zeros inside kept blocks).
BLOCK_TOLERANCE = 0.05


@dataclasses.dataclass(frozen=True)
class WeightSparsity:
    """Sparsity structure of one 2-D weight in ``(out_features, in_features)`` orientation.

    Attributes
    ----------
    shape : tuple[int, int]
        ``(out, in)``; for conv2d ``in`` is ``in_channels / groups * kh * kw``.
    density : float
        Fraction of nonzero elements.
    zero_out_channels, zero_in_channels : tuple[int, ...]
        Rows / columns that are entirely zero.
    block_shape : tuple[int, int]
        Largest candidate block ``(rows_of_out, cols_of_in)`` that covers the nonzeros with at
        most ``BLOCK_TOLERANCE`` explicit zeros (see :func:`analyze_weight`).
    block_density : float
        Fraction of blocks of ``block_shape`` (over the zero-padded block grid) holding any nonzero.
    nm : tuple[int, int] | None
        The tightest ``N:M`` (at most ``N`` nonzeros in every group of ``M`` consecutive input
        weights of a row) the weight conforms to, or ``None``.
    """

    shape: tuple[int, int]
    density: float
    zero_out_channels: tuple[int, ...]
    zero_in_channels: tuple[int, ...]
    block_shape: tuple[int, int]
    block_density: float
    nm: tuple[int, int] | None

    def to_attr(self) -> dict[str, Any]:
        """A dict that TVM can store as an attribute (``nm`` of ``None`` becomes ``[]``)."""
        return {
            "shape": list(self.shape),
            "density": float(self.density),
            "zero_out_channels": list(self.zero_out_channels),
            "zero_in_channels": list(self.zero_in_channels),
            "block_shape": list(self.block_shape),
            "block_density": float(self.block_density),
            "nm": list(self.nm) if self.nm is not None else [],
        }

    @classmethod
    def from_attr(cls, attr: Mapping[str, Any]) -> WeightSparsity:
        """Inverse of :meth:`to_attr`; accepts a Python dict or a TVM ``Map``.

        Extra keys (``"op"``, ``"groups"``, ``"kernel"`` written by ``DetectSparsity``) are ignored.
        """
        nm = tuple(int(v) for v in attr["nm"])
        return cls(
            shape=tuple(int(v) for v in attr["shape"]),
            density=float(attr["density"]),
            zero_out_channels=tuple(int(v) for v in attr["zero_out_channels"]),
            zero_in_channels=tuple(int(v) for v in attr["zero_in_channels"]),
            block_shape=tuple(int(v) for v in attr["block_shape"]),
            block_density=float(attr["block_density"]),
            nm=nm if nm else None,
        )


def _block_grid(mask: np.ndarray, block: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per block of the zero-padded grid: whether it holds a nonzero, and its real element count."""
    rows, cols = mask.shape
    br, bc = block
    gr, gc = -(-rows // br), -(-cols // bc)
    padded = np.zeros((gr * br, gc * bc), dtype=bool)
    padded[:rows, :cols] = mask
    any_nonzero = padded.reshape(gr, br, gc, bc).any(axis=(1, 3))
    row_sizes = np.minimum(br, rows - np.arange(gr) * br)
    col_sizes = np.minimum(bc, cols - np.arange(gc) * bc)
    return any_nonzero, np.outer(row_sizes, col_sizes)


def _conforms_nm(mask: np.ndarray, n: int, m: int) -> bool:
    rows, cols = mask.shape
    groups = -(-cols // m)
    padded = np.zeros((rows, groups * m), dtype=bool)
    padded[:, :cols] = mask
    return bool((padded.reshape(rows, groups, m).sum(axis=2) <= n).all())


def analyze_weight(
    weight: np.ndarray,
    *,
    blocks: Sequence[tuple[int, int]] = DEFAULT_BLOCKS,
    nm: Sequence[tuple[int, int]] = DEFAULT_NM,
) -> WeightSparsity:
    """Analyse the zero structure of a 2-D ``(out_features, in_features)`` weight.

    Block rule: a candidate block is *accepted* when the real (unpadded) elements inside its
    nonzero blocks number at most ``(1 + BLOCK_TOLERANCE) * nnz``, i.e. storing the weight in
    that block format adds at most 5% explicit zeros. Among accepted blocks the one with the
    largest area wins; ties go to fewer stored elements, then to the earlier candidate.
    ``1x1`` is always accepted. Counting real elements rather than padded blocks keeps an exact
    block pattern exact when the shape is not a multiple of the block.

    N:M rule: the candidates are tried from the smallest ``N/M`` (then smallest ``M``, since 2:4
    implies 4:8); the first one every row satisfies is reported. Groups are ``M`` consecutive
    input weights of one row; the last group is padded with zeros. A weight with fewer than ``M``
    inputs never conforms to ``N:M`` (it would only by padding).

    Parameters
    ----------
    weight : numpy.ndarray
        2-D weight in ``(out, in)`` orientation.
    blocks : Sequence[tuple[int, int]]
        Candidate blocks ``(rows_of_out, cols_of_in)``.
    nm : Sequence[tuple[int, int]]
        Candidate ``(N, M)`` patterns.

    Returns
    -------
    sparsity : WeightSparsity
    """
    weight = np.asarray(weight)
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {weight.shape}")
    if not blocks:
        raise ValueError("blocks must hold at least one candidate block, e.g. (1, 1)")
    mask = weight != 0
    rows, cols = mask.shape
    nnz = int(mask.sum())
    density = nnz / mask.size if mask.size else 0.0

    best = None
    for order, block in enumerate(blocks):
        block = (int(block[0]), int(block[1]))
        if block[0] < 1 or block[1] < 1:
            raise ValueError(f"blocks must be positive (rows, cols) pairs, got {block}")
        any_nonzero, sizes = _block_grid(mask, block)
        stored = int(sizes[any_nonzero].sum())
        if block != (1, 1) and stored > (1.0 + BLOCK_TOLERANCE) * nnz:
            continue
        key = (-block[0] * block[1], stored, order)
        if best is None or key < best[0]:
            block_density = float(any_nonzero.mean()) if any_nonzero.size else 0.0
            best = (key, block, block_density)
    if best is None:  # (1, 1) not among the candidates and nothing else fits
        best = (None, (1, 1), density)

    found_nm = None
    for n, m in sorted(((int(n), int(m)) for n, m in nm), key=lambda p: (p[0] / p[1], p[1])):
        if cols >= m and _conforms_nm(mask, n, m):
            found_nm = (n, m)
            break

    return WeightSparsity(
        shape=(rows, cols),
        density=float(density),
        zero_out_channels=tuple(int(i) for i in np.flatnonzero(~mask.any(axis=1))),
        zero_in_channels=tuple(int(i) for i in np.flatnonzero(~mask.any(axis=0))),
        block_shape=best[1],
        block_density=best[2],
        nm=found_nm,
    )


def _const_array(expr: relax.Expr) -> np.ndarray | None:
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    return None


def constant_weight_of(
    call: relax.Call, values: Mapping[relax.Var, relax.Expr]
) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The constant weight of a matmul / conv2d call in ``(out, in)`` orientation, with op info.

    ``values`` maps bound vars to their values so that a ``permute_dims`` of a constant (torch
    ``Linear`` before ``FoldConstant``) is seen through. Returns ``None`` when the call is not a
    supported op or its weight is not a constant.
    """
    if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
        return None
    if call.op.name == "relax.matmul":
        weight = call.args[1]
        array = _const_array(weight)
        if array is not None:
            if array.ndim != 2:
                return None
            return array.T, {"op": "matmul", "groups": 1}
        bound = values.get(weight) if isinstance(weight, relax.Var) else None
        if (
            isinstance(bound, relax.Call)
            and isinstance(bound.op, tvm.ir.Op)
            and bound.op.name == "relax.permute_dims"
        ):
            array = _const_array(bound.args[0])
            axes = bound.attrs.axes
            if array is not None and array.ndim == 2 and (axes is None or list(axes) == [1, 0]):
                return array, {"op": "matmul", "groups": 1}
        return None
    if call.op.name == "relax.nn.conv2d":
        array = _const_array(call.args[1])
        if array is None or array.ndim != 4 or call.attrs.kernel_layout != "OIHW":
            return None
        out_channels, _, kh, kw = array.shape
        info = {"op": "conv2d", "groups": int(call.attrs.groups), "kernel": [kh, kw]}
        return array.reshape(out_channels, -1), info
    return None


def _detect_in_function(func: relax.Function) -> dict[str, dict[str, Any]]:
    bindings = function_bindings(func)
    values = dict(bindings)
    names = unique_binding_names(func)
    records: dict[str, dict[str, Any]] = {}
    for var, value in bindings:
        found = constant_weight_of(value, values)
        if found is None:
            continue
        weight, info = found
        records[names[var]] = {**analyze_weight(weight).to_attr(), **info}
    return records


@tvm.transform.module_pass(opt_level=0, name="DetectSparsity")
class DetectSparsity:
    """Record the sparsity of every constant matmul / conv2d weight on its function.

    For each ``R.matmul(x, W)`` with ``W`` a 2-D constant ``(K, N)`` (or ``permute_dims`` of a
    constant) and each ``R.nn.conv2d(x, W)`` with ``W`` an OIHW constant, the pass runs
    :func:`analyze_weight` and stores the record under the function attribute
    ``"tvm_sparse.weights"``, keyed by the (uniquified, see
    :func:`~tvm_sparse.passes._bindings.unique_binding_names`) name of the op's output binding.
    The dataflow is unchanged. Re-running the pass replaces the attribute, so it reflects the
    current IR; a function left without such weights loses a stale attribute.

    Before::

        @R.function
        def main(x: R.Tensor((1, 4), "float32")):
            with R.dataflow():
                lv = R.matmul(x, metadata["ir.GenericConst"][0])  # (4, 8), half the rows zero
                R.output(lv)
            return lv

    After: the same body, with::

        R.func_attr({"tvm_sparse.weights": {"lv": {"op": "matmul", "groups": 1,
            "shape": [8, 4], "density": 0.5, "zero_out_channels": [], ...}}})

    Pipeline: after ``DecomposeOpsForInference`` and ``FoldConstant``, before the passes that
    read the attribute; run again after any pass that changes weights.
    """

    def transform_module(self, mod: IRModule, ctx: tvm.transform.PassContext) -> IRModule:
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, relax.Function):
                continue
            records = _detect_in_function(func)
            if records:
                updates[gv] = func.with_attr(WEIGHTS_ATTR, records)
            elif func.attrs is not None and WEIGHTS_ATTR in func.attrs:
                updates[gv] = func.without_attr(WEIGHTS_ATTR)
        return with_functions(mod, updates)
