"""Which units to keep: masks from scores, per layer or across layers (global scope).

Weight-level schemes rank their units (weights or blocks; ``n:m`` keeps the top ``n`` of every
``m``); channel and head groups rank their channels, and keep a multiple of ``round_to``. In
global scope one threshold applies across the pooled units, layers with their own sparsity apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from tvm_sparse.prune.config import WeightTarget, find_override
from tvm_sparse.prune.dependency import ChannelGroup
from tvm_sparse.prune.schemes import NMScheme

__all__ = ["keep_top", "round_kept", "select_group_masks", "select_weight_masks"]

#: ``sparsity_at(final)``: the schedule's sparsity now for a final one (``None``: the default).
SparsityAt = Callable[[float | None], float]
#: ``report(done, total)`` as layers are done.
Report = Callable[[int, int], None]


def keep_top(scores: torch.Tensor, kept: int) -> torch.Tensor:
    """Boolean keep-mask of the ``kept`` highest scores (ties broken by position)."""
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    kept = max(0, min(int(kept), scores.numel()))
    if kept:
        order = torch.argsort(scores.reshape(-1).double(), descending=True, stable=True)
        keep[order[:kept]] = True
    return keep


def round_kept(kept: int, group: ChannelGroup, round_to: int) -> int:
    """Round kept channels up to a multiple of ``round_to``; keep at least one multiple."""
    kept = max(kept, 1)
    if round_to > 1:
        kept = math.ceil(kept / round_to) * round_to
    return min(kept, group.num_channels)


def select_weight_masks(
    targets: Sequence[WeightTarget],
    scores: dict[str, torch.Tensor],
    *,
    scope: str,
    sparsity_at: SparsityAt,
    report: Report,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Masks of weight-level schemes from a score per weight.

    Returns
    -------
    tuple[dict[str, torch.Tensor], dict[str, float]]
        The masks by parameter name, and each one's sparsity.
    """
    masks: dict[str, torch.Tensor] = {}
    pooled: list[tuple[WeightTarget, torch.Tensor]] = []
    for i, w in enumerate(targets):
        score = scores[w.fqn]
        matrix = score.reshape(score.shape[0], -1)
        if isinstance(w.scheme, NMScheme):
            masks[w.fqn] = w.scheme.mask(matrix).reshape(score.shape)
        elif scope == "global" and w.sparsity is None:
            pooled.append((w, w.scheme.unit_scores(matrix)))
        else:
            units = w.scheme.unit_scores(matrix)
            k = int(round(sparsity_at(w.sparsity) * units.numel()))
            keep = keep_top(units, units.numel() - k)
            masks[w.fqn] = w.scheme.expand(keep, matrix.shape).reshape(score.shape)
        report(i + 1, len(targets))
    if pooled:
        units = torch.cat([u for _, u in pooled])
        k = int(round(sparsity_at(None) * units.numel()))
        keep = keep_top(units, units.numel() - k)
        offset = 0
        for w, u in pooled:
            shape = scores[w.fqn].shape
            unit_keep = keep[offset : offset + u.numel()]
            offset += u.numel()
            flat = w.scheme.expand(unit_keep, torch.Size([shape[0], math.prod(shape[1:])]))
            masks[w.fqn] = flat.reshape(shape)
    layer_sparsity = {f: float(1 - m.float().mean()) for f, m in masks.items()}
    return masks, layer_sparsity


def select_group_masks(
    groups: Sequence[ChannelGroup],
    scores: dict[str, torch.Tensor],
    *,
    scope: str,
    sparsity_at: SparsityAt,
    round_to: int,
    config: Sequence[dict[str, Any]],
) -> tuple[dict[str, torch.Tensor], dict[str, float], dict[str, list[int]]]:
    """Masks of channel (or head) groups from a score per weight of every slice.

    Returns
    -------
    tuple[dict[str, torch.Tensor], dict[str, float], dict[str, list[int]]]
        The masks by parameter name, each group's sparsity and its pruned channels, by root.
    """
    plans: list[tuple[ChannelGroup, torch.Tensor, int]] = []  # group, scores, kept
    pooled = []
    for group in groups:
        channel_scores = group.channel_scores(scores)
        override = find_override(config, group.modules)
        group_round = getattr(override["scheme"], "round_to", 1) if override else round_to
        if override is not None and "sparsity" in override:
            kept = group.num_channels - math.floor(
                sparsity_at(override["sparsity"]) * group.num_channels
            )
            plans.append((group, channel_scores, round_kept(kept, group, group_round)))
        elif scope == "global":
            mean = channel_scores.mean()
            pooled.append((group, channel_scores, channel_scores / mean if mean > 0 else
                           channel_scores, group_round))  # fmt: skip
        else:
            kept = group.num_channels - math.floor(sparsity_at(None) * group.num_channels)
            plans.append((group, channel_scores, round_kept(kept, group, group_round)))
    if pooled:
        normalised = torch.cat([n for _, _, n, _ in pooled])
        k = math.floor(sparsity_at(None) * normalised.numel())
        pruned = torch.zeros(normalised.numel(), dtype=torch.bool)
        if k:
            pruned[torch.argsort(normalised, stable=True)[:k]] = True
        offset = 0
        for group, channel_scores, _, group_round in pooled:
            n_pruned = int(pruned[offset : offset + group.num_channels].sum())
            offset += group.num_channels
            kept = round_kept(group.num_channels - n_pruned, group, group_round)
            plans.append((group, channel_scores, kept))
    masks = {f: torch.ones_like(s, dtype=torch.bool) for f, s in scores.items()}
    layer_sparsity = {}
    pruned_channels = {}
    for group, channel_scores, kept in plans:
        keep = keep_top(channel_scores, kept)
        for fqn, mask in group.masks(keep).items():
            masks[fqn] &= mask
        pruned = torch.nonzero(~keep).flatten().tolist()
        if pruned:
            pruned_channels[group.root] = pruned
        layer_sparsity[group.root] = 1.0 - kept / group.num_channels
    return masks, layer_sparsity, pruned_channels
