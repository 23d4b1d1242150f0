"""Masks kept in force with ``torch.nn.utils.parametrize``, as ``torch.ao.pruning`` does.

While a pruner is active every masked parameter is ``original * mask``: training updates the
original, the forward pass (and so the loss and any export) sees the zeros. Squashing removes
the parametrization and leaves plain parameters holding the zeros.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["FakeSparsity", "apply_masks", "attach_masks", "get_masks", "squash_masks"]


class FakeSparsity(nn.Module):
    """Parametrization multiplying a parameter by a fixed mask buffer."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask.to(x.dtype)


def _split(fqn: str) -> tuple[str, str]:
    module, _, name = fqn.rpartition(".")
    return module, name


def _fake_sparsity(module: nn.Module, name: str) -> FakeSparsity | None:
    if not parametrize.is_parametrized(module, name):
        return None
    for p in module.parametrizations[name]:
        if isinstance(p, FakeSparsity):
            return p
    return None


def attach_masks(model: nn.Module, fqns: list[str]) -> None:
    """Parametrize each named parameter with an all-ones :class:`FakeSparsity` (idempotent)."""
    for fqn in fqns:
        module_name, name = _split(fqn)
        module = model.get_submodule(module_name)
        if _fake_sparsity(module, name) is None:
            param = getattr(module, name)
            parametrize.register_parametrization(
                module, name, FakeSparsity(torch.ones_like(param, dtype=torch.bool))
            )


def set_mask(model: nn.Module, fqn: str, mask: torch.Tensor) -> None:
    """Replace the mask of a parametrized parameter."""
    module_name, name = _split(fqn)
    fake = _fake_sparsity(model.get_submodule(module_name), name)
    if fake is None:
        raise KeyError(f"{fqn!r} has no pruning mask attached")
    fake.mask.copy_(mask.to(fake.mask.device))


def original(model: nn.Module, fqn: str) -> torch.Tensor:
    """The trainable tensor behind a (possibly parametrized) parameter."""
    module_name, name = _split(fqn)
    module = model.get_submodule(module_name)
    if parametrize.is_parametrized(module, name):
        return module.parametrizations[name].original
    return getattr(module, name)


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks in force, by parameter name."""
    masks = {}
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for name in list(module.parametrizations.keys()):
            fake = _fake_sparsity(module, name)
            if fake is not None:
                masks[f"{module_name}.{name}" if module_name else name] = fake.mask.clone()
    return masks


def squash_masks(model: nn.Module) -> None:
    """Remove the masks, leaving plain parameters with the zeros written in."""
    for module in list(model.modules()):
        if not parametrize.is_parametrized(module):
            continue
        for name in list(module.parametrizations.keys()):
            if _fake_sparsity(module, name) is not None:
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Zero a plain model's parameters where ``masks`` are false (for reapplying saved masks).

    Raises
    ------
    ValueError
        If a mask names a parameter the model lacks or has another shape.
    """
    params = dict(model.named_parameters())
    with torch.no_grad():
        for fqn, mask in masks.items():
            if fqn not in params:
                raise ValueError(f"mask for {fqn!r}: the model has no such parameter")
            if params[fqn].shape != mask.shape:
                raise ValueError(
                    f"mask for {fqn!r} has shape {tuple(mask.shape)}, "
                    f"the parameter {tuple(params[fqn].shape)}"
                )
            params[fqn].mul_(mask.to(params[fqn].dtype))
    return model
