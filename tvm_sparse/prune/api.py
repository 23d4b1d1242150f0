"""``prune()``: one-shot pruning in one call."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from tvm_sparse.prune.criteria import Criterion
from tvm_sparse.prune.pruner import Progress, Pruner
from tvm_sparse.prune.result import PruneResult
from tvm_sparse.prune.schemes import SparsityScheme

__all__ = ["prune"]


def prune(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple,
    *,
    pattern: str | SparsityScheme | None = None,
    sparsity: float | None = None,
    target: Any = None,
    criterion: str | Criterion = "l1",
    scope: str = "layer",
    config: Sequence[dict[str, Any]] | None = None,
    ignored_layers: Sequence[str | nn.Module] | None = None,
    block_shape: tuple[int, int] | None = None,
    n_m: tuple[int, int] | None = None,
    round_to: int | None = None,
    data: Iterable | None = None,
    loss_fn: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
    physical: bool = False,
    progress: Progress | None = None,
) -> PruneResult:
    """Prune ``model`` in place, in one shot, and leave plain weights holding zeros.

    The options are :class:`~tvm_sparse.prune.pruner.Pruner`'s; use a ``Pruner`` for gradual
    schedules with fine-tuning between steps.

    Parameters
    ----------
    model : nn.Module
        The model to prune; changed in place.
    example_inputs : torch.Tensor | tuple
        Positional inputs for one forward pass.
    pattern : str | SparsityScheme | None
        ``"unstructured"``, ``"n:m"`` (or ``"2:4"``, ``"4:8"``), ``"block"``, ``"channel"`` or
        ``"head"``; ``None`` takes the target preset's.
    sparsity : float | None
        Fraction pruned, in ``[0, 1)``; 0.5 by default (``n:m`` implies it).
    target : str | TargetPreset | None
        Target preset whose pruning defaults fill in what is not given.
    physical : bool
        For ``channel``: also remove the zeroed channels from the layers.

    Returns
    -------
    PruneResult
        Per-layer sparsity, parameters and FLOPs before and after, and the masks.

    Examples
    --------
    >>> result = tvm_sparse.prune(model, (x,), pattern="channel", sparsity=0.5)  # doctest: +SKIP
    >>> print(result.summary())  # doctest: +SKIP
    """
    pruner = Pruner(
        model,
        example_inputs,
        pattern=pattern,
        sparsity=sparsity,
        target=target,
        criterion=criterion,
        scope=scope,
        config=config,
        ignored_layers=ignored_layers,
        block_shape=block_shape,
        n_m=n_m,
        round_to=round_to,
        data=data,
        loss_fn=loss_fn,
        progress=progress,
    )
    pruner.step()
    return pruner.finalize(physical=physical)
