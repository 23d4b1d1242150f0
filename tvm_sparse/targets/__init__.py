"""Targets as data: presets per device, resolved into TVM targets."""

from .presets import (
    PruningDefaults,
    TargetPreset,
    get_preset,
    is_host_target,
    list_presets,
    register_preset,
    resolve_target,
)

__all__ = [
    "PruningDefaults",
    "TargetPreset",
    "get_preset",
    "is_host_target",
    "list_presets",
    "register_preset",
    "resolve_target",
]
