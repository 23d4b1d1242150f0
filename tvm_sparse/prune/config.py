"""A pruner's configuration checked against the model: the scheme, ignored layers, overrides.

Defaults plus a list of per-layer overrides, as in ``torch.ao.pruning``::

    config=[{"module": "fc1", "sparsity": 0.3}, {"tensor_fqn": "conv2.weight", "sparsity": 0}]

Every mistake is a clear error naming the option at fault and, for names, the close matches.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tvm_sparse.prune.schemes import SPARSITY_SCHEMES, SparsityScheme, check_sparsity, make_scheme

__all__ = [
    "WeightTarget",
    "as_inputs",
    "check_override",
    "find_override",
    "resolve_ignored_layers",
    "resolve_scheme",
    "unknown_name",
    "weight_targets",
]

logger = logging.getLogger("tvm_sparse.prune")

_OVERRIDE_KEYS = ("module", "tensor_fqn", "sparsity")


@dataclass
class WeightTarget:
    """One weight masked by a weight-level scheme (``unstructured``, ``n:m``, ``block``)."""

    module: str
    fqn: str
    scheme: SparsityScheme
    sparsity: float | None  # None: the default (and, in global scope, pooled)


def as_inputs(example_inputs: Any) -> tuple:
    """Positional inputs as a tuple: a tensor alone, or a tuple or list of them."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise TypeError(
        "example_inputs must be a tensor or a tuple of tensors, got "
        f"{type(example_inputs).__name__}"
    )


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> ValueError:
    """The error for a name the model lacks, with close matches and the valid names."""
    choices = sorted(c for c in choices if c)
    close = difflib.get_close_matches(name, choices, n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return ValueError(
        f"{kind} {name!r} does not exist in the model{hint} "
        f"(valid names: {', '.join(choices[:20])}{', ...' if len(choices) > 20 else ''})"
    )


def resolve_scheme(
    pattern: str | SparsityScheme | None,
    target: Any,
    block_shape: tuple[int, int] | None,
    n_m: tuple[int, int] | None,
    round_to: int | None,
) -> SparsityScheme:
    """The scheme from the user's options over the target preset's pruning defaults."""
    defaults = None
    if target is not None:
        from tvm_sparse.targets import resolve_target  # loads TVM: only when a target is given

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


def resolve_ignored_layers(
    ignored: Sequence[str | nn.Module] | None, modules: dict[str, nn.Module]
) -> set[str]:
    """The names of the ignored layers, given as names or as modules of the model."""
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
                raise unknown_name("ignored_layers: layer", item, modules)
            out.add(item)
        else:
            raise TypeError(
                f"ignored_layers must hold module names or modules, got {type(item).__name__}"
            )
    return out


def check_override(
    override: Any,
    scheme: SparsityScheme,
    modules: dict[str, nn.Module],
    params: dict[str, nn.Parameter],
) -> dict[str, Any]:
    """One ``config`` entry, checked, keyed by ``"module"``, with its ``"scheme"`` built."""
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
            raise unknown_name("config: tensor_fqn", fqn, params)
        override["module"] = fqn.rpartition(".")[0]
    elif override["module"] not in modules:
        raise unknown_name("config: module", override["module"], modules)
    if "sparsity" in override:
        override["sparsity"] = check_sparsity(override["sparsity"], name="config sparsity")
    valid = set(_OVERRIDE_KEYS) | set(scheme.options()) | {"n_m"}
    unknown = sorted(set(override) - valid)
    if unknown:
        raise ValueError(
            f"config entry for {override['module']!r}: unknown key {unknown[0]!r}; "
            f"valid keys are {', '.join(sorted(valid))}"
        )
    options = {k: v for k, v in override.items() if k not in _OVERRIDE_KEYS}
    override["scheme"] = make_scheme(scheme, **options) if options else scheme
    return override


def find_override(config: Sequence[dict[str, Any]], names: Iterable[str]) -> dict[str, Any] | None:
    """The checked override of any of the modules ``names``; the last entry wins."""
    names = set(names)
    for override in reversed(config):
        if override["module"] in names:
            return override
    return None


def weight_targets(
    modules: dict[str, nn.Module],
    scheme: SparsityScheme,
    config: Sequence[dict[str, Any]],
    ignored: set[str],
) -> tuple[list[WeightTarget], dict[str, str]]:
    """The weights of conv, linear and attention layers a weight-level scheme masks.

    Returns
    -------
    tuple[list[WeightTarget], dict[str, str]]
        The targets, and the weights left dense with the reason.
    """
    targets = []
    skipped = {}
    for name, module in modules.items():
        if name in ignored:
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
        override = find_override(config, [name])
        layer_scheme = override["scheme"] if override else scheme
        sparsity = override.get("sparsity") if override else None
        for attr in fqns:
            fqn = f"{name}.{attr}" if name else attr
            reason = layer_scheme.unsupported_reason(getattr(module, attr))
            if reason:
                skipped[fqn] = reason
                logger.info("leaving %s dense: %s", fqn, reason)
                continue
            targets.append(WeightTarget(name, fqn, layer_scheme, sparsity))
    return targets, skipped
