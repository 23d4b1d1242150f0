"""Kernel builders remembered by their arguments.

A kernel's TVMScript is parsed each time its builder runs, and parsing a register-tiled
kernel (every ``T.unroll`` and macro expanded at each call site) takes seconds. The same kernel
is asked for many times in one process: by each layer of a shape, by the layer timer once per
weight copy it cycles through, and again when the model is built after the timer chose. The
builders' arguments are shapes, names and frozen knob dataclasses, and a ``PrimFunc`` cannot
change once built, so one parse serves every caller. Arguments that cannot be hashed (a list
where a tuple is meant) build the kernel anew.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

__all__ = ["cached_kernel"]

F = TypeVar("F", bound=Callable)

#: Distinct kernels kept per builder: a large model has a few hundred layer shapes at most.
_KEPT = 1024


def cached_kernel(builder: F) -> F:
    """``builder`` with its results kept by arguments (``builder.cache_clear()`` forgets
    them)."""
    cached = functools.lru_cache(maxsize=_KEPT)(builder)

    @functools.wraps(builder)
    def build(*args, **kwargs):
        try:
            hash((args, tuple(sorted(kwargs.items()))))
        except TypeError:
            return builder(*args, **kwargs)
        return cached(*args, **kwargs)

    build.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
    build.cache_info = cached.cache_info  # type: ignore[attr-defined]
    return build  # type: ignore[return-value]
