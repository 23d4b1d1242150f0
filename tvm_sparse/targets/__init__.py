"""Targets as data: presets per device, resolved into TVM targets, and the backend of each
target family."""

from .backend import COMPUTE_DTYPES, Backend, backend_of, check_compute_dtype
from .host import (
    available_cores,
    host_cpu_features,
    is_host_target,
    machine_key,
    missing_host_features,
)
from .presets import (
    PruningDefaults,
    TargetPreset,
    get_preset,
    list_presets,
    register_preset,
    resolve_target,
)

__all__ = [
    "COMPUTE_DTYPES",
    "Backend",
    "available_cores",
    "backend_of",
    "check_compute_dtype",
    "PruningDefaults",
    "TargetPreset",
    "get_preset",
    "host_cpu_features",
    "is_host_target",
    "list_presets",
    "machine_key",
    "missing_host_features",
    "register_preset",
    "resolve_target",
]
