"""The pruner: masks attached once, recomputed by ``step()``, squashed by ``finalize()``.

The life cycle is ``torch.ao.pruning``'s (prepare, step, squash mask)::

    pruner = Pruner(model, example_inputs, pattern="channel", sparsity=0.5,
                    schedule="cubic", total_steps=10)
    for epoch in range(10):
        train_one_epoch(model)      # the masks stay in force while training
        pruner.step()               # sparsity follows the schedule
    result = pruner.finalize()      # plain weights holding zeros, and the counts

``state_dict()`` and ``from_state_dict()`` resume a run that was stopped between steps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from tvm_sparse.prune.config import (
    WeightTarget,
    as_inputs,
    check_override,
    resolve_ignored_layers,
    resolve_scheme,
    unknown_name,
    weight_targets,
)
from tvm_sparse.prune.criteria import Criterion, calibration_gradients, make_criterion
from tvm_sparse.prune.dependency import (
    ChannelGroup,
    build_channel_groups,
    find_attention_groups,
    find_attention_modules,
)
from tvm_sparse.prune.masks import attach_masks, get_masks, original, set_mask, squash_masks
from tvm_sparse.prune.physical import remove_pruned_channels
from tvm_sparse.prune.result import PruneResult, measure
from tvm_sparse.prune.schedules import get_schedule
from tvm_sparse.prune.schemes import SparsityScheme, check_sparsity, make_scheme
from tvm_sparse.prune.selection import select_group_masks, select_weight_masks

__all__ = ["Pruner", "Progress"]

logger = logging.getLogger("tvm_sparse.prune")

#: ``progress(stage, done, total)`` is called as long work advances.
Progress = Callable[[str, int, int], None]

_SCOPES = ("layer", "global")
_STATE_VERSION = 1


class Pruner:
    """Prune a PyTorch model to a sparsity pattern, at once or gradually.

    Parameters
    ----------
    model : nn.Module
        The model; it is changed in place (masks are attached as parametrizations).
    example_inputs : torch.Tensor | tuple
        Positional inputs for one forward pass: used to trace channel dependencies and to
        count FLOPs.
    pattern : str | SparsityScheme | None
        One of :data:`~tvm_sparse.prune.schemes.SPARSITY_SCHEMES` (``"unstructured"``,
        ``"n:m"``, ``"block"``, ``"channel"``, ``"head"``), an N:M like ``"2:4"``, or a scheme.
        ``None`` takes the pattern of ``target``.
    sparsity : float | None
        Final fraction pruned, in ``[0, 1)``: of the weights (``unstructured``, ``block``) or of
        the channels or heads of each group (``channel``, ``head``). ``n:m`` implies ``1 - n/m``.
        Defaults to 0.5.
    target : str | TargetPreset | None
        A target preset (name or object); its pruning defaults fill in ``pattern``,
        ``block_shape``, ``n_m`` and ``round_to`` that are not given.
    criterion : str | Criterion
        ``"l1"``, ``"l2"`` (magnitude) or ``"taylor"`` (``|w * grad|`` over ``data``).
    scope : str
        ``"layer"``: every layer (group) reaches the sparsity; ``"global"``: one threshold
        across layers (group scores normalised by their mean), layers with overrides apart.
    config : list[dict] | None
        Per-layer overrides: ``{"module": name}`` or ``{"tensor_fqn": name}`` with
        ``"sparsity"`` and options of the scheme (``block_shape``, ``n``, ``m``, ``round_to``);
        see :mod:`tvm_sparse.prune.config`.
    ignored_layers : Sequence[str | nn.Module] | None
        Layers left dense (for channels: groups that contain one are left alone).
    block_shape, n_m, round_to
        Options of the ``block``, ``n:m`` and ``channel`` schemes.
    schedule : str | Callable
        ``"oneshot"``, ``"linear"`` or ``"cubic"`` (or ``f(step, total, initial, final)``).
    total_steps : int
        Steps over which the schedule reaches ``sparsity``.
    initial_sparsity : float
        Sparsity the schedule starts from.
    data : Iterable | None
        Calibration batches ``(inputs, targets)`` for the Taylor criterion; iterated once per
        step.
    loss_fn : Callable | None
        ``loss_fn(outputs, targets)``; cross entropy by default.
    progress : Progress | None
        Called as ``progress(stage, done, total)`` while steps run; progress is also logged on
        the ``tvm_sparse.prune`` logger.
    """

    def __init__(
        self,
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
        schedule: str | Callable[[int, int, float, float], float] = "oneshot",
        total_steps: int = 1,
        initial_sparsity: float = 0.0,
        data: Iterable | None = None,
        loss_fn: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
        progress: Progress | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.example_inputs = as_inputs(example_inputs)
        self.scheme = resolve_scheme(pattern, target, block_shape, n_m, round_to)
        fixed = self.scheme.fixed_sparsity()
        if sparsity is None:
            sparsity = fixed if fixed is not None else 0.5
        self.sparsity = check_sparsity(sparsity)
        if fixed is not None and not math.isclose(self.sparsity, fixed):
            raise ValueError(
                f"sparsity={sparsity!r} contradicts the {self.scheme.n}:{self.scheme.m} "
                f"pattern, which implies {fixed:g}; leave sparsity unset"
            )
        self.criterion = make_criterion(criterion)
        if scope == "local":
            scope = "layer"
        if scope not in _SCOPES:
            raise ValueError(f"unknown scope {scope!r}: choose one of {', '.join(_SCOPES)}")
        self.scope = scope
        self._schedule_name = schedule if isinstance(schedule, str) else None
        self.schedule = get_schedule(schedule)
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
        self.total_steps = total_steps
        self.initial_sparsity = check_sparsity(initial_sparsity, name="initial_sparsity")
        if self.criterion.needs_grad and data is None:
            raise ValueError(
                f"criterion={self.criterion.name!r} needs gradients: pass data= "
                "(a few batches of (inputs, targets))"
            )
        self.data = data
        self.loss_fn = loss_fn or nn.functional.cross_entropy
        self.progress = progress

        modules = dict(model.named_modules())
        params = dict(model.named_parameters())
        self.ignored_layers = resolve_ignored_layers(ignored_layers, modules)
        self.config = [check_override(o, self.scheme, modules, params) for o in config or []]

        self.step_count = 0
        self.history: list[dict[str, Any]] = []
        self.skipped: dict[str, str] = {}
        self.pruned_channels: dict[str, list[int]] = {}
        self._before = measure(model, self.example_inputs)
        self._groups: list[ChannelGroup] = []
        self._weights: list[WeightTarget] = []
        if self.scheme.name == "channel":
            attention = {
                name
                for spec in find_attention_modules(model)
                for name in (spec.q, spec.k, spec.v, spec.o)
                if name
            }
            self._groups, skipped = build_channel_groups(
                model, self.example_inputs, ignored=self.ignored_layers | attention
            )
            self.skipped.update(skipped)
        elif self.scheme.name == "head":
            specs = [
                s for s in find_attention_modules(model) if s.module not in self.ignored_layers
            ]
            if not specs:
                raise ValueError(
                    "pattern='head' found no attention module: it needs nn.MultiheadAttention "
                    "or a module with a num_heads (or heads) attribute and q/k/v/o linear "
                    "children"
                )
            self._groups = find_attention_groups(model, specs)
        else:
            self._weights, skipped = weight_targets(
                modules, self.scheme, self.config, self.ignored_layers
            )
            self.skipped.update(skipped)
        fqns = sorted({s.tensor_fqn for g in self._groups for s in g.slices})
        fqns += [w.fqn for w in self._weights]
        attach_masks(model, fqns)
        self._fqns = fqns
        logger.info(
            "pruner ready: pattern=%s, %d %s, sparsity %.2f over %d step(s)",
            self.scheme.name,
            len(self._groups) or len(self._weights),
            "groups" if self._groups else "layers",
            self.sparsity,
            self.total_steps,
        )

    # Life cycle ------------------------------------------------------------------------------

    def current_sparsity(self, final: float | None = None) -> float:
        """The schedule's sparsity at the current step for a final sparsity (default ours)."""
        final = self.sparsity if final is None else final
        initial = min(self.initial_sparsity, final)
        return float(self.schedule(self.step_count, self.total_steps, initial, final))

    def step(self) -> float:
        """Advance the schedule by one step and recompute every mask.

        Returns
        -------
        float
            The scheduled sparsity now in force.
        """
        self.step_count += 1
        target = self.current_sparsity()
        scores = self._scores()
        if self._groups:
            masks, layer_sparsity, self.pruned_channels = select_group_masks(
                self._groups,
                scores,
                scope=self.scope,
                sparsity_at=self.current_sparsity,
                round_to=getattr(self.scheme, "round_to", 1),
                config=self.config,
            )
        else:
            masks, layer_sparsity = select_weight_masks(
                self._weights,
                scores,
                scope=self.scope,
                sparsity_at=self.current_sparsity,
                report=lambda done, total: self._report("layers", done, total),
            )
        with torch.no_grad():
            for fqn, mask in masks.items():
                set_mask(self.model, fqn, mask)
        self.history.append({"step": self.step_count, "sparsity": target, "layers": layer_sparsity})
        logger.info(
            "pruning step %d/%d: %s sparsity %.3f", self.step_count, self.total_steps,
            self.scheme.name, target,
        )  # fmt: skip
        return target

    def _effective(self, fqn: str) -> torch.Tensor:
        module, _, name = fqn.rpartition(".")
        return getattr(self.model.get_submodule(module), name).detach()

    def _scores(self) -> dict[str, torch.Tensor]:
        """The criterion's score of every masked tensor, by name."""
        grads = {}
        if self.criterion.needs_grad:
            grads = calibration_gradients(
                self.model,
                {fqn: original(self.model, fqn) for fqn in self._fqns},
                self.data,
                self.loss_fn,
                lambda batches: self._report("gradients", batches, 0),
            )
        return {f: self.criterion.score(self._effective(f), grads.get(f)) for f in self._fqns}

    def _report(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)

    def finalize(self, *, physical: bool = False) -> PruneResult:
        """Squash the masks into the weights and report what was pruned.

        Parameters
        ----------
        physical : bool
            For the ``channel`` pattern: also remove the zeroed channels from the layers
            (Torch-Pruning rewrites their shapes), instead of leaving it to the compiler.

        Returns
        -------
        PruneResult
        """
        if physical and self.scheme.name != "channel":
            raise ValueError(
                f"physical=True removes channels: it needs pattern='channel', "
                f"not {self.scheme.name!r}"
            )
        masks = get_masks(self.model)
        squash_masks(self.model)
        if physical:
            remove_pruned_channels(self.model, self.example_inputs)
            masks = {}
        return self._result(masks)

    def result(self) -> PruneResult:
        """The counts now, with the masks still in force."""
        return self._result(get_masks(self.model))

    def _result(self, masks: dict[str, torch.Tensor]) -> PruneResult:
        return PruneResult(
            self.model,
            self.scheme.name,
            self._before,
            measure(self.model, self.example_inputs),
            masks,
            dict(self.pruned_channels),
            dict(self.skipped),
        )

    # Saving ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Masks, step, history and configuration, to save with ``torch.save`` and resume."""
        return {
            "version": _STATE_VERSION,
            "step": self.step_count,
            "masks": get_masks(self.model),
            "history": [dict(h) for h in self.history],
            "pruned_channels": dict(self.pruned_channels),
            "config": {
                "pattern": self.scheme.name,
                **self.scheme.options(),
                "sparsity": self.sparsity,
                "criterion": self.criterion.name,
                "scope": self.scope,
                "config": [{k: v for k, v in o.items() if k != "scheme"} for o in self.config],
                "ignored_layers": sorted(self.ignored_layers),
                "schedule": self._schedule_name,
                "total_steps": self.total_steps,
                "initial_sparsity": self.initial_sparsity,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore masks, step and history saved by :meth:`state_dict`.

        Raises
        ------
        ValueError
            If the state was saved from another pattern or names parameters this model lacks.
        """
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported pruner state version {state.get('version')!r}")
        pattern = state["config"]["pattern"]
        if pattern != self.scheme.name:
            raise ValueError(
                f"the state was saved by a {pattern!r} pruner, this one is {self.scheme.name!r}"
            )
        attached = set(self._fqns)
        for fqn in state["masks"]:
            if fqn not in attached:
                raise unknown_name("pruner state: masked parameter", fqn, attached)
        with torch.no_grad():
            for fqn, mask in state["masks"].items():
                set_mask(self.model, fqn, mask)
        self.step_count = int(state["step"])
        self.history = [dict(h) for h in state["history"]]
        self.pruned_channels = dict(state.get("pruned_channels", {}))

    @classmethod
    def from_state_dict(
        cls,
        model: nn.Module,
        example_inputs: torch.Tensor | tuple,
        state: dict[str, Any],
        **options: Any,
    ) -> Pruner:
        """Rebuild a pruner on a fresh model from a saved state and resume it.

        ``options`` (``data``, ``loss_fn``, ``progress``, a callable ``schedule``...) are
        passed to the constructor over the saved configuration.
        """
        config = dict(state["config"])
        pattern = config.pop("pattern")
        scheme_options = {
            k: config.pop(k) for k in list(config) if k in ("n", "m", "block_shape", "round_to")
        }
        if config.get("schedule") is None:
            config.pop("schedule", None)
        config.update(options)
        if config.get("criterion") == "taylor" and "data" not in options:
            config["criterion"] = "l1"  # scores are not needed to reapply saved masks
        pruner = cls(
            model, example_inputs, pattern=make_scheme(pattern, **scheme_options), **config
        )
        pruner.load_state_dict(state)
        return pruner
