"""``prune()``: one-shot pruning in one call, a :class:`~tvm_sparse.prune.pruner.Pruner` step."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from tvm_sparse.prune.pruner import Pruner
from tvm_sparse.prune.result import PruneResult

__all__ = ["prune"]

#: Pruner options that only mean something over several steps.
_GRADUAL = ("schedule", "total_steps", "initial_sparsity")


def prune(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple,
    *,
    physical: bool = False,
    **options: Any,
) -> PruneResult:
    """Prune ``model`` in place, in one shot, and leave plain weights holding zeros.

    The options are :class:`~tvm_sparse.prune.pruner.Pruner`'s (``pattern``, ``sparsity``,
    ``target``, ``criterion``, ``scope``, ``config``, ``ignored_layers``...), but for its
    schedule: use a ``Pruner`` for gradual schedules with fine-tuning between steps.

    Parameters
    ----------
    model : nn.Module
        The model to prune; changed in place.
    example_inputs : torch.Tensor | tuple
        Positional inputs for one forward pass.
    physical : bool
        For ``channel``: also remove the zeroed channels from the layers.
    **options
        Passed to :class:`~tvm_sparse.prune.pruner.Pruner`.

    Returns
    -------
    PruneResult
        Per-layer sparsity, parameters and FLOPs before and after, and the masks.

    Raises
    ------
    TypeError
        If an option is not one of ``Pruner``'s one-shot options; the message lists them.

    Examples
    --------
    >>> result = tvm_sparse.prune(model, (x,), pattern="channel", sparsity=0.5)  # doctest: +SKIP
    >>> print(result.summary())  # doctest: +SKIP
    """
    _check_options(options)
    pruner = Pruner(model, example_inputs, **options)
    pruner.step()
    return pruner.finalize(physical=physical)


def _check_options(options: dict[str, Any]) -> None:
    valid = [
        name
        for name, p in inspect.signature(Pruner).parameters.items()
        if p.kind is p.KEYWORD_ONLY and name not in _GRADUAL
    ]
    for key in options:
        if key in _GRADUAL:
            raise TypeError(
                f"prune() prunes in one shot and takes no {key!r}: use a Pruner for "
                "gradual schedules"
            )
        if key not in valid:
            raise TypeError(
                f"prune() got an unexpected keyword argument {key!r}; valid options are "
                f"{', '.join(sorted([*valid, 'physical']))}"
            )
