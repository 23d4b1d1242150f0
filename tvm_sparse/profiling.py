"""Where a compiled model's time goes: milliseconds per call of each kernel it runs.

The Relax VM calls an instrument before and after each of its call instructions (kernels,
and the builtins that allocate and reshape); :func:`profile` times each pair on the host's
clock over a number of calls. The instrument is a Python function, so every call adds a few
microseconds to the kernel it surrounds: small kernels read high, and the total is above
:meth:`CompiledModel.benchmark`'s. Compare kernels with each other, not with other runtimes.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Any

__all__ = ["KernelTime", "profile"]


@dataclasses.dataclass(frozen=True)
class KernelTime:
    """One kernel's share of a call: ``ms`` per model call, run ``count`` times in each."""

    name: str
    ms: float
    count: int

    def __str__(self) -> str:
        return f"{self.ms:8.3f} ms  x{self.count:<3d} {self.name}"


def profile(model: Any, *inputs: Any, calls: int = 20, warmup: int = 3) -> list[KernelTime]:
    """Time each kernel of ``model`` (a :class:`~tvm_sparse.CompiledModel`) over ``calls``
    calls on ``inputs``, slowest first."""
    if calls < 1:
        raise ValueError(f"calls must be at least 1, got {calls}")
    for _ in range(warmup):
        model(*inputs)
    vm = model.vm
    args, _ = model._convert_inputs(inputs)
    totals: dict[str, float] = collections.defaultdict(float)
    counts: collections.Counter = collections.Counter()
    started: list[float] = []

    def instrument(_func, symbol, before_run, _ret, *_args):
        if before_run:
            started.append(time.perf_counter())
        else:
            totals[symbol] += time.perf_counter() - started.pop()
            counts[symbol] += 1
        return 0  # VMInstrumentReturnKind.NO_OP: run the call as it is

    main = vm["main"]
    vm.set_instrument(instrument)
    try:
        for _ in range(calls):
            main(*args)
    finally:
        vm.set_instrument(None)  # later calls run without the callback
    rows = [KernelTime(name, 1e3 * t / calls, counts[name] // calls) for name, t in totals.items()]
    return sorted(rows, key=lambda r: -r.ms)
