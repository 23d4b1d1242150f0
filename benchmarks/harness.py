"""The benchmarks' harness: runtimes measured in turns, each case in a process of its own,
results written as JSON and a Markdown table with the machine they were measured on.

Ratios between runtimes measured in one run are comparable; the timers themselves are the
package's (``tvm_sparse.baselines``), which the CLI and the built-in example use too.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from tvm_sparse.targets.host import available_cores

__all__ = [
    "in_fresh_process",
    "interleave",
    "machine_info",
    "max_relative_error",
    "settle",
    "write_results",
]


#: How long the thread pools of PyTorch, ONNX Runtime and TVM may spin after their last call.
SETTLE_S = 0.2


def settle() -> None:
    """Wait until the worker threads of the last runtime measured have gone idle.

    Each runtime's pool spins for a while after a call; on a 2-core host a spinning pool takes
    the second core from the next runtime measured in the same process, which then looks slower
    than it is. Call this between measurements of different runtimes.
    """
    time.sleep(SETTLE_S)


def interleave(
    measures: Mapping[str, Callable[[], dict[str, float]]],
    *,
    rounds: int = 5,
    settle_between: bool = True,
) -> dict[str, float]:
    """Best median latency (ms) of each measurement, taken in turns: A, B, C, B, C, A, ...

    Each measure returns a summary with ``median_ms`` (``tvm_sparse.baselines.time_callable``,
    ``CompiledModel.benchmark``). The order rotates every round, and before each turn the
    previous runtime's threads are let go idle (:func:`settle`). On a shared host a burst of
    other work only ever adds time, and it lands in some rounds, not all: the fastest round's
    median is each runtime's latency, and ratios of these hold from run to run.
    """
    names = list(measures)
    best: dict[str, float] = {}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if settle_between:
                settle()
            ms = measures[name]()["median_ms"]
            best[name] = min(best.get(name, ms), ms)
    return {name: best[name] for name in names}


def in_fresh_process(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a newly started Python process; its result.

    A benchmark case measured after others in one process can run slower than in a process of
    its own (the half-channel ResNet-18 after the FFN cases did). Measuring each case in its own
    process keeps what earlier cases left behind (memory, thread pools) out of the figures.
    ``fn`` and its arguments must pickle; ``fn`` must be importable.
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def max_relative_error(builds: Sequence[Callable[[Any], Any]], x: Any, expected: Any) -> float:
    """The largest error of any of ``builds`` on ``x`` against ``expected`` (PyTorch's output),
    relative to the largest magnitude of ``expected``."""
    expected = np.asarray(expected)
    scale = float(np.abs(expected).max())
    return max(float(np.abs(np.asarray(b(x)) - expected).max()) / scale for b in builds)


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch
    import tvm
    from tvm.target import codegen

    return {
        "cpu": codegen.llvm_get_system_cpu(),
        "cores": available_cores(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "tvm": tvm.__version__,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def write_results(
    name: str, rows: list[dict[str, Any]], columns: list[str], *, out_dir: str, notes: str = ""
) -> tuple[str, str]:
    """Write ``rows`` as ``<out_dir>/<name>.json`` and a Markdown table ``<name>.md``."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, f"{name}.json")
    md_path = os.path.join(out_dir, f"{name}.md")
    with open(json_path, "w") as f:
        json.dump({"machine": machine_info(), "rows": rows}, f, indent=1)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for col in columns:
            value = row.get(col, "")
            if isinstance(value, float):
                # errors and other small figures keep their digits instead of reading 0.000
                value = f"{value:.1e}" if value and abs(value) < 1e-2 else f"{value:.3f}"
            cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    info = machine_info()
    header = f"# {name}\n\nMeasured on {info['cpu']}, {info['cores']} cores, {info['date']}.\n\n"
    with open(md_path, "w") as f:
        f.write(header + "\n".join(lines) + "\n" + (f"\n{notes}\n" if notes else ""))
    return json_path, md_path
