"""Physically remove zeroed channels, with Torch-Pruning rewriting the layers' shapes."""

from __future__ import annotations

import logging

import torch
from torch import nn

from tvm_sparse.prune.dependency import _groups_of, trace

__all__ = ["remove_pruned_channels"]

logger = logging.getLogger("tvm_sparse.prune")


def remove_pruned_channels(
    model: nn.Module, example_inputs: torch.Tensor | tuple
) -> dict[str, int]:
    """Remove every channel whose producers are all zero, across its coupled group.

    A channel is removed when the rows of every conv or linear layer producing it, their biases
    and the batch norm scale and shift are all zero, so its output is exactly zero and removing
    it (and the consumers' columns that read it) leaves the model's outputs unchanged. Groups
    through grouped (not depthwise) convolutions are left alone.

    Parameters
    ----------
    model : nn.Module
        A plain model (masks squashed); changed in place.
    example_inputs : torch.Tensor | tuple
        Positional inputs for one forward pass, to trace the dependency graph.

    Returns
    -------
    dict[str, int]
        Group root -> number of channels removed.
    """
    inputs = (
        (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    )
    graph = trace(model, inputs)
    groups, _ = _groups_of(graph, model, set())
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    plans = []
    for group in groups:
        grouped = any(
            isinstance(m := modules.get(s.tensor_fqn.rpartition(".")[0]), nn.Conv2d | nn.Conv1d)
            and 1 < m.groups < m.in_channels
            for s in group.slices
        )
        if grouped:
            continue
        magnitude = {s.tensor_fqn: params[s.tensor_fqn].detach().abs() for s in group.slices}
        score = group.channel_scores(magnitude, roles=("out",))
        zero = torch.nonzero(score == 0).flatten().tolist()
        if zero and len(zero) < group.num_channels:
            plans.append((modules[group.root], zero, group.root))
    removed = {}
    for module, idxs, root in plans:
        pruner = graph.get_pruner_of_module(module)
        graph.get_pruning_group(module, pruner.prune_out_channels, idxs).prune()
        removed[root] = len(idxs)
        logger.info("removed %d channels of the group rooted at %s", len(idxs), root)
    return removed
