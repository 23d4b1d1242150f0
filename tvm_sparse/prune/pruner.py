"""The pruner: masks attached once, recomputed by ``step()``, squashed by ``finalize()``.

The life cycle is ``torch.ao.pruning``'s (prepare, step, squash mask)::

    pruner = Pruner(model, example_inputs, pattern="channel", sparsity=0.5,
                    schedule="cubic", total_steps=10)
    for epoch in range(10):
        train_one_epoch(model)      # the masks stay in force while training
        pruner.step()               # sparsity follows the schedule
    result = pruner.finalize()      # plain weights holding zeros, and the counts

Configuration is defaults plus a list of per-layer overrides, as in ``torch.ao.pruning``::

    config=[{"module": "fc1", "sparsity": 0.3}, {"tensor_fqn": "conv2.weight", "sparsity": 0}]
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tvm_sparse.prune import masks as _masks
from tvm_sparse.prune.criteria import Criterion, make_criterion
from tvm_sparse.prune.dependency import (
    ChannelGroup,
    build_channel_groups,
    find_attention_groups,
    find_attention_modules,
)
from tvm_sparse.prune.result import PruneResult, measure
from tvm_sparse.prune.schedules import get_schedule
from tvm_sparse.prune.schemes import (
    SPARSITY_SCHEMES,
    NMScheme,
    SparsityScheme,
    check_sparsity,
    make_scheme,
)

__all__ = ["Pruner", "Progress"]

logger = logging.getLogger("tvm_sparse.prune")

#: ``progress(stage, done, total)`` is called as long work advances.
Progress = Callable[[str, int, int], None]

_SCOPES = ("layer", "global")
_OVERRIDE_KEYS = ("module", "tensor_fqn", "sparsity")
_STATE_VERSION = 1


@dataclass
class _WeightTarget:
    module: str
    fqn: str
    scheme: SparsityScheme
    sparsity: float | None  # None: the default (and, in global scope, pooled)


def _as_inputs(example_inputs: Any) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise TypeError(
        "example_inputs must be a tensor or a tuple of tensors, got "
        f"{type(example_inputs).__name__}"
    )


def _unknown_name(kind: str, name: str, choices: Iterable[str]) -> ValueError:
    choices = sorted(c for c in choices if c)
    close = difflib.get_close_matches(name, choices, n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return ValueError(
        f"{kind} {name!r} does not exist in the model{hint} "
        f"(valid names: {', '.join(choices[:20])}{', ...' if len(choices) > 20 else ''})"
    )


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
        ``"sparsity"`` and options of the scheme (``block_shape``, ``n``, ``m``, ``round_to``).
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
        self.example_inputs = _as_inputs(example_inputs)
        self.scheme = self._resolve_scheme(pattern, target, block_shape, n_m, round_to)
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
        self.ignored_layers = self._resolve_ignored(ignored_layers, modules)
        self.config = [self._check_override(o, modules, params) for o in (config or [])]

        self.step_count = 0
        self.history: list[dict[str, Any]] = []
        self.skipped: dict[str, str] = {}
        self.pruned_channels: dict[str, list[int]] = {}
        self._before = measure(model, self.example_inputs)
        self._groups: list[ChannelGroup] = []
        self._weights: list[_WeightTarget] = []
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
            self._weights = self._weight_targets(modules)
        fqns = sorted({s.tensor_fqn for g in self._groups for s in g.slices})
        fqns += [w.fqn for w in self._weights]
        _masks.attach_masks(model, fqns)
        self._fqns = fqns
        logger.info(
            "pruner ready: pattern=%s, %d %s, sparsity %.2f over %d step(s)",
            self.scheme.name,
            len(self._groups) or len(self._weights),
            "groups" if self._groups else "layers",
            self.sparsity,
            self.total_steps,
        )

    # Configuration ---------------------------------------------------------------------------

    @staticmethod
    def _resolve_scheme(pattern, target, block_shape, n_m, round_to) -> SparsityScheme:
        defaults = None
        if target is not None:
            from tvm_sparse.targets import resolve_target

            defaults = resolve_target(target).pruning
        if pattern is None:
            if defaults is None:
                raise ValueError(
                    f"pass pattern= (one of {', '.join(SPARSITY_SCHEMES)}) or target= "
                    "to choose it from the target's preset"
                )
            pattern = defaults.pattern
        scheme = make_scheme(pattern)
        options: dict[str, Any] = {}
        fields = scheme.options()
        explicit = {"block_shape": block_shape, "round_to": round_to}
        if n_m is not None:
            if not isinstance(n_m, (tuple, list)) or len(n_m) != 2:
                raise ValueError(f"n_m must be a pair (n, m), got {n_m!r}")
            explicit.update(n=n_m[0], m=n_m[1])
        preset = {}
        if defaults is not None:
            preset = {"block_shape": defaults.block_shape, "round_to": defaults.round_to}
            if defaults.n_m is not None:
                preset.update(n=defaults.n_m[0], m=defaults.n_m[1])
        # The user's explicit choices win over the preset, and options of other schemes are
        # ignored only when they come from the preset.
        for key, value in explicit.items():
            if value is None:
                continue
            if key not in fields:
                raise ValueError(
                    f"{'n_m' if key in ('n', 'm') else key} does not apply to the "
                    f"{scheme.name!r} pattern: valid options are {list(fields) or 'none'}"
                )
            options[key] = value
        for key, value in preset.items():
            if value is not None and key in fields and key not in options:
                if isinstance(pattern, SparsityScheme):
                    continue  # a scheme object is explicit already
                options[key] = value
        return scheme.replace(**options) if options else scheme

    @staticmethod
    def _resolve_ignored(ignored, modules: dict[str, nn.Module]) -> set[str]:
        names = {id(m): n for n, m in modules.items()}
        out = set()
        for item in ignored or ():
            if isinstance(item, nn.Module):
                if id(item) not in names:
                    raise ValueError(
                        f"ignored_layers: the module {type(item).__name__} is not in the model"
                    )
                out.add(names[id(item)])
            elif isinstance(item, str):
                if item not in modules:
                    raise _unknown_name("ignored_layers: layer", item, modules)
                out.add(item)
            else:
                raise TypeError(
                    f"ignored_layers must hold module names or modules, got {type(item).__name__}"
                )
        return out

    def _check_override(self, override, modules, params) -> dict[str, Any]:
        if not isinstance(override, dict):
            raise TypeError(f"config entries must be dicts, got {type(override).__name__}")
        override = dict(override)
        if ("module" in override) == ("tensor_fqn" in override):
            raise ValueError(
                f"config entry {override!r} must name exactly one of 'module' or 'tensor_fqn'"
            )
        if "tensor_fqn" in override:
            fqn = override.pop("tensor_fqn")
            if fqn not in params:
                raise _unknown_name("config: tensor_fqn", fqn, params)
            override["module"] = fqn.rpartition(".")[0]
        elif override["module"] not in modules:
            raise _unknown_name("config: module", override["module"], modules)
        if "sparsity" in override:
            override["sparsity"] = check_sparsity(override["sparsity"], name="config sparsity")
        valid = set(_OVERRIDE_KEYS) | set(self.scheme.options()) | {"n_m"}
        unknown = sorted(set(override) - valid)
        if unknown:
            raise ValueError(
                f"config entry for {override['module']!r}: unknown key {unknown[0]!r}; "
                f"valid keys are {', '.join(sorted(valid))}"
            )
        options = {k: v for k, v in override.items() if k not in _OVERRIDE_KEYS}
        override["scheme"] = make_scheme(self.scheme, **options) if options else self.scheme
        return override

    def _override_for(self, names: Iterable[str]) -> dict[str, Any] | None:
        names = set(names)
        for override in reversed(self.config):  # the last entry wins
            if override["module"] in names:
                return override
        return None

    def _weight_targets(self, modules: dict[str, nn.Module]) -> list[_WeightTarget]:
        targets = []
        for name, module in modules.items():
            if name in self.ignored_layers:
                continue
            if isinstance(module, nn.MultiheadAttention):
                fqns = (
                    ["in_proj_weight"]
                    if module._qkv_same_embed_dim
                    else ["q_proj_weight", "k_proj_weight", "v_proj_weight"]
                )
            elif isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                fqns = ["weight"]
            else:
                continue
            override = self._override_for([name])
            scheme = override["scheme"] if override else self.scheme
            sparsity = override.get("sparsity") if override else None
            for attr in fqns:
                fqn = f"{name}.{attr}" if name else attr
                reason = scheme.unsupported_reason(getattr(module, attr))
                if reason:
                    self.skipped[fqn] = reason
                    logger.info("leaving %s dense: %s", fqn, reason)
                    continue
                targets.append(_WeightTarget(name, fqn, scheme, sparsity))
        return targets

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
        grads = self._gradients()
        if self._groups:
            masks, layer_sparsity = self._structured_masks(grads)
        else:
            masks, layer_sparsity = self._weight_masks(grads)
        with torch.no_grad():
            for fqn, mask in masks.items():
                _masks.set_mask(self.model, fqn, mask)
        self.history.append({"step": self.step_count, "sparsity": target, "layers": layer_sparsity})
        logger.info(
            "pruning step %d/%d: %s sparsity %.3f", self.step_count, self.total_steps,
            self.scheme.name, target,
        )  # fmt: skip
        return target

    def _effective(self, fqn: str) -> torch.Tensor:
        module, _, name = fqn.rpartition(".")
        return getattr(self.model.get_submodule(module), name).detach()

    def _gradients(self) -> dict[str, torch.Tensor]:
        if not self.criterion.needs_grad:
            return {}
        originals = {fqn: _masks.original(self.model, fqn) for fqn in self._fqns}
        # Leave the user's gradients as they were: an optimizer step may be pending.
        saved = [(p, p.grad) for p in self.model.parameters()]
        for p, _ in saved:
            p.grad = None
        batches = 0
        for batch in self.data:
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise ValueError("data must yield (inputs, targets) pairs for the Taylor criterion")
            inputs, targets = batch
            outputs = self.model(*_as_inputs(inputs))
            self.loss_fn(outputs, targets).backward()
            batches += 1
            self._report("gradients", batches, 0)
        if batches == 0:
            raise ValueError("data yielded no batches for the Taylor criterion")
        grads = {
            fqn: torch.zeros_like(t) if t.grad is None else t.grad.detach().clone()
            for fqn, t in originals.items()
        }
        for p, grad in saved:
            p.grad = grad
        return grads

    def _scores(self, fqns: Iterable[str], grads: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {f: self.criterion.score(self._effective(f), grads.get(f)) for f in fqns}

    def _report(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)

    def _weight_masks(self, grads):
        scores = self._scores([w.fqn for w in self._weights], grads)
        masks: dict[str, torch.Tensor] = {}
        pooled: list[tuple[_WeightTarget, torch.Tensor]] = []
        for i, w in enumerate(self._weights):
            score = scores[w.fqn]
            matrix = score.reshape(score.shape[0], -1)
            if isinstance(w.scheme, NMScheme):
                masks[w.fqn] = w.scheme.mask(matrix).reshape(score.shape)
            elif self.scope == "global" and w.sparsity is None:
                pooled.append((w, w.scheme.unit_scores(matrix)))
            else:
                units = w.scheme.unit_scores(matrix)
                k = int(round(self.current_sparsity(w.sparsity) * units.numel()))
                keep = _keep_top(units, units.numel() - k)
                masks[w.fqn] = w.scheme.expand(keep, matrix.shape).reshape(score.shape)
            self._report("layers", i + 1, len(self._weights))
        if pooled:
            units = torch.cat([u for _, u in pooled])
            k = int(round(self.current_sparsity() * units.numel()))
            keep = _keep_top(units, units.numel() - k)
            offset = 0
            for w, u in pooled:
                shape = self._effective(w.fqn).shape
                unit_keep = keep[offset : offset + u.numel()]
                offset += u.numel()
                flat = w.scheme.expand(unit_keep, torch.Size([shape[0], math.prod(shape[1:])]))
                masks[w.fqn] = flat.reshape(shape)
        layer_sparsity = {f: float(1 - m.float().mean()) for f, m in masks.items()}
        return masks, layer_sparsity

    def _structured_masks(self, grads):
        fqns = sorted({s.tensor_fqn for g in self._groups for s in g.slices})
        scores = self._scores(fqns, grads)
        plans: list[tuple[ChannelGroup, torch.Tensor, int]] = []  # group, scores, kept
        pooled = []
        round_to = getattr(self.scheme, "round_to", 1)
        for group in self._groups:
            channel_scores = group.channel_scores(scores)
            override = self._override_for(group.modules)
            group_round = getattr(override["scheme"], "round_to", 1) if override else round_to
            if override is not None and "sparsity" in override:
                kept = group.num_channels - math.floor(
                    self.current_sparsity(override["sparsity"]) * group.num_channels
                )
                plans.append((group, channel_scores, _round_kept(kept, group, group_round)))
            elif self.scope == "global":
                mean = channel_scores.mean()
                pooled.append((group, channel_scores, channel_scores / mean if mean > 0 else
                               channel_scores, group_round))  # fmt: skip
            else:
                kept = group.num_channels - math.floor(self.current_sparsity() * group.num_channels)
                plans.append((group, channel_scores, _round_kept(kept, group, round_to)))
        if pooled:
            normalised = torch.cat([n for _, _, n, _ in pooled])
            k = math.floor(self.current_sparsity() * normalised.numel())
            pruned = torch.zeros(normalised.numel(), dtype=torch.bool)
            if k:
                pruned[torch.argsort(normalised, stable=True)[:k]] = True
            offset = 0
            for group, channel_scores, _, group_round in pooled:
                n_pruned = int(pruned[offset : offset + group.num_channels].sum())
                offset += group.num_channels
                kept = _round_kept(group.num_channels - n_pruned, group, group_round)
                plans.append((group, channel_scores, kept))
        masks = {f: torch.ones_like(self._effective(f), dtype=torch.bool) for f in fqns}
        layer_sparsity = {}
        self.pruned_channels = {}
        for group, channel_scores, kept in plans:
            keep = _keep_top(channel_scores, kept)
            for fqn, mask in group.masks(keep).items():
                masks[fqn] &= mask
            pruned = torch.nonzero(~keep).flatten().tolist()
            if pruned:
                self.pruned_channels[group.root] = pruned
            layer_sparsity[group.root] = 1.0 - kept / group.num_channels
        return masks, layer_sparsity

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
        masks = _masks.get_masks(self.model)
        _masks.squash_masks(self.model)
        if physical:
            from tvm_sparse.prune.physical import remove_pruned_channels

            remove_pruned_channels(self.model, self.example_inputs)
            masks = {}
        return PruneResult(
            self.model,
            self.scheme.name,
            self._before,
            measure(self.model, self.example_inputs),
            masks,
            dict(self.pruned_channels),
            dict(self.skipped),
        )

    def result(self) -> PruneResult:
        """The counts now, with the masks still in force."""
        return PruneResult(
            self.model,
            self.scheme.name,
            self._before,
            measure(self.model, self.example_inputs),
            _masks.get_masks(self.model),
            dict(self.pruned_channels),
            dict(self.skipped),
        )

    # Saving ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Masks, step, history and configuration, to save with ``torch.save`` and resume."""
        return {
            "version": _STATE_VERSION,
            "step": self.step_count,
            "masks": _masks.get_masks(self.model),
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
                raise _unknown_name("pruner state: masked parameter", fqn, attached)
        with torch.no_grad():
            for fqn, mask in state["masks"].items():
                _masks.set_mask(self.model, fqn, mask)
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


def _keep_top(scores: torch.Tensor, kept: int) -> torch.Tensor:
    """Boolean keep-mask of the ``kept`` highest scores (ties broken by position)."""
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    kept = max(0, min(int(kept), scores.numel()))
    if kept:
        order = torch.argsort(scores.reshape(-1).double(), descending=True, stable=True)
        keep[order[:kept]] = True
    return keep


def _round_kept(kept: int, group: ChannelGroup, round_to: int) -> int:
    """Round kept channels up to a multiple of ``round_to``; keep at least one multiple."""
    kept = max(kept, 1)
    if round_to > 1:
        kept = math.ceil(kept / round_to) * round_to
    return min(kept, group.num_channels)
