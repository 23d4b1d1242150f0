"""Importance criteria: a score per weight, from which schemes and groups rank what to prune.

The Taylor criterion reads the gradients of calibration batches (:func:`calibration_gradients`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from tvm_sparse.prune.config import as_inputs

__all__ = [
    "CRITERIA",
    "Criterion",
    "MagnitudeCriterion",
    "TaylorCriterion",
    "calibration_gradients",
    "make_criterion",
]


@dataclass(frozen=True)
class Criterion:
    """Base class: ``score(weight, grad)`` returns a non-negative score per weight."""

    name: ClassVar[str] = ""
    #: Whether scores need gradients from calibration batches.
    needs_grad: ClassVar[bool] = False

    def score(self, weight: torch.Tensor, grad: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class MagnitudeCriterion(Criterion):
    """``|w| ** p``: L1 (``p=1``) or squared L2 (``p=2``) magnitude.

    Summed over a channel these give the channel's L1 norm or squared L2 norm, which rank
    channels exactly as the norms do.
    """

    p: int = 1

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"l{self.p}"

    def score(self, weight: torch.Tensor, grad: torch.Tensor | None = None) -> torch.Tensor:
        return weight.detach().abs().pow(self.p)


@dataclass(frozen=True)
class TaylorCriterion(Criterion):
    """First-order Taylor: ``|w * dL/dw|``, the estimated loss change when a weight is removed.

    Gradients are accumulated over the calibration batches the user passes (``data=``).
    """

    name: ClassVar[str] = "taylor"
    needs_grad: ClassVar[bool] = True

    def score(self, weight: torch.Tensor, grad: torch.Tensor | None = None) -> torch.Tensor:
        if grad is None:
            raise ValueError(
                "the 'taylor' criterion needs gradients: pass data= (a few batches) to prune"
            )
        return (weight.detach() * grad).abs()


#: Criterion name -> instance; the CLI's ``--criterion`` choices are these keys.
CRITERIA: dict[str, Criterion] = {
    "l1": MagnitudeCriterion(1),
    "l2": MagnitudeCriterion(2),
    "taylor": TaylorCriterion(),
}


def make_criterion(criterion: str | Criterion) -> Criterion:
    """Look a criterion up by name, or pass an instance through.

    Raises
    ------
    ValueError
        If the name is unknown; the message lists the valid ones.
    """
    if isinstance(criterion, Criterion):
        return criterion
    if isinstance(criterion, str) and criterion.lower() in CRITERIA:
        return CRITERIA[criterion.lower()]
    raise ValueError(f"unknown criterion {criterion!r}: choose one of {', '.join(CRITERIA)}")


def calibration_gradients(
    model: nn.Module,
    tensors: dict[str, torch.Tensor],
    data: Iterable,
    loss_fn: Callable[[torch.Tensor, Any], torch.Tensor],
    report: Callable[[int], None],
) -> dict[str, torch.Tensor]:
    """The gradients of ``loss_fn`` summed over the ``(inputs, targets)`` batches of ``data``.

    Parameters
    ----------
    tensors : dict[str, torch.Tensor]
        The trainable tensors whose gradients are returned, by name.
    report : Callable[[int], None]
        Called with the number of batches done.

    Raises
    ------
    ValueError
        If ``data`` yields no batch, or something else than ``(inputs, targets)`` pairs.
    """
    # Leave the user's gradients as they were: an optimizer step may be pending.
    saved = [(p, p.grad) for p in model.parameters()]
    for p, _ in saved:
        p.grad = None
    batches = 0
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError("data must yield (inputs, targets) pairs for the Taylor criterion")
        inputs, targets = batch
        outputs = model(*as_inputs(inputs))
        loss_fn(outputs, targets).backward()
        batches += 1
        report(batches)
    if batches == 0:
        raise ValueError("data yielded no batches for the Taylor criterion")
    grads = {
        fqn: torch.zeros_like(t) if t.grad is None else t.grad.detach().clone()
        for fqn, t in tensors.items()
    }
    for p, grad in saved:
        p.grad = grad
    return grads
