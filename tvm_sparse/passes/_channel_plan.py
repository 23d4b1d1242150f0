"""What ``ShrinkPrunedChannels`` does to each binding once the removable channel classes are
known: the kept channels of each tensor, the constant corrections and where they fold, and the
decision row of each conv2d / matmul for the compile report.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import relax

from ._channel_graph import ChannelGraph
from ._channel_weights import constant_input_correction


class ShrinkPlan:
    """What to do with each binding, from the removable channel classes."""

    def __init__(
        self,
        graph: ChannelGraph,
        removed: set[int],
        reasons: dict[int, str],
        exact: dict[relax.Var, tuple[int, str]] | None = None,
    ):
        self.graph = graph
        self.removed = removed
        self.reasons = reasons
        self.exact = exact or {}
        self.keep: dict[relax.Var, np.ndarray] = {}
        for var in graph.chan:
            mask = graph.keep_mask(var, removed)
            if mask is not None and not mask.all():
                self.keep[var] = mask
        self.corrections: dict[relax.Var, np.ndarray] = {}
        self.fold_into: dict[relax.Var, relax.Var] = {}  # weight op -> bias add absorbing it
        for var, op in graph.weight_ops.items():
            corr = constant_input_correction(op, self.keep.get(op.x), graph.chan[op.x].cv)
            if corr is not None:
                self.corrections[var] = corr
                users = graph.uses.get(var, [])
                if len(users) == 1 and users[0] is not None:
                    value = graph.values[users[0]]
                    if (
                        isinstance(value, relax.Call)
                        and value.op.name == "relax.add"
                        and any(isinstance(a, tvm.ir.GenericConst) for a in value.args)
                    ):
                        self.fold_into[var] = users[0]
        self.changes = bool(self.keep) or bool(self.corrections)

    def per_axis(self, var: relax.Var) -> dict[int, np.ndarray]:
        """Kept indices along each channel axis of ``var`` (only axes that lose channels)."""
        mask = self.keep.get(var)
        if mask is None:
            return {}
        axes = self.graph.chan[var].axes
        out = {}
        for i, ax in enumerate(axes):
            kept = mask.any(axis=tuple(j for j in range(mask.ndim) if j != i))
            if not kept.all():
                out[ax] = np.flatnonzero(kept)
        return out

    def decisions(self) -> dict[str, dict[str, Any]]:
        graph = self.graph
        out: dict[str, dict[str, Any]] = {}
        for var, op in graph.weight_ops.items():
            name = graph.name_of(var)
            out_c = op.weight.shape[0]
            zero_rows = ~op.weight.reshape(out_c, -1).any(axis=1)
            keep_out = self.keep.get(var)
            keep_in = self.keep.get(op.x)
            removed_out = 0 if keep_out is None else int((~keep_out).sum())
            if op.kind == "depthwise" and keep_out is None:
                removed_out = 0
            removed_in = 0 if keep_in is None else int((~keep_in).sum())
            if removed_out or removed_in:
                parts = []
                if removed_out:
                    parts.append(f"removed {removed_out}/{out_c} output channels")
                if removed_in and op.kind != "depthwise":
                    parts.append(f"removed {removed_in}/{keep_in.size} input channels")
                if var in self.corrections:
                    parts.append("folded constant inputs into the bias")
                kept_out = out_c - removed_out
                if self.exact.get(var, (None,))[0] == kept_out:
                    parts.append(self.exact[var][1])
                kept_zero = zero_rows & (keep_out if keep_out is not None else True)
                if kept_zero.any() and op.kind != "depthwise":
                    parts.append(
                        f"kept {int(kept_zero.sum())} zero output channels: "
                        + self._why_kept(var, kept_zero)
                    )
                out[name] = {
                    "kernel": "dense-shrunk",
                    "pattern": "channel",
                    "reason": ", ".join(parts),
                }
            elif zero_rows.any():
                out[name] = {
                    "kernel": "dense",
                    "pattern": "channel",
                    "reason": f"kept {int(zero_rows.sum())}/{out_c} zero output channels: "
                    + self._why_kept(var, zero_rows),
                }
        return out

    def _why_kept(self, var: relax.Var, rows: np.ndarray) -> str:
        """The reasons, sorted, that keep the output channels ``rows`` of ``var``."""
        roots = self.graph.uf.roots(self.graph.chan[var].ids.ravel()[rows])
        return "; ".join(sorted({self.reasons.get(int(r), "not removable") for r in roots}))
