"""Latency measurement shared by the CLI, the example and ``benchmarks/``.

Every figure is a median over repeated runs in the calling process, so ratios between
runtimes measured in one run are comparable.
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

from .targets.host import available_cores

__all__ = [
    "in_fresh_process",
    "interleave",
    "machine_info",
    "max_relative_error",
    "onnxruntime_runner",
    "settle",
    "summarize",
    "time_callable",
    "time_onnxruntime",
    "time_torch",
    "write_results",
]


#: How long the thread pools of PyTorch, ONNX Runtime and TVM may spin after their last call.
SETTLE_S = 0.2


def settle() -> None:
    """Wait until the worker threads of the last runtime measured have gone idle.

    Each runtime's pool spins for a while after a call; on a 2-core host a spinning pool takes
    the second core from the next runtime measured in the same process, which then looks up to
    2x slower. Call this between measurements of different runtimes.
    """
    time.sleep(SETTLE_S)


def interleave(
    measures: Mapping[str, Callable[[], dict[str, float]]],
    *,
    rounds: int = 5,
    settle_between: bool = True,
) -> dict[str, float]:
    """Best median latency (ms) of each measurement, taken in turns: A, B, C, B, C, A, ...

    Each measure returns a summary with ``median_ms`` (:func:`time_callable`,
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

    A benchmark case measured after others in one process can run slower: in one run the
    half-channel ResNet-18 measured 7.8 ms (best of five turns) after the FFN cases, and
    5.1 ms in a process of its own, its dense build 24.9 ms against 18.0. Measuring each
    case in its own process keeps what earlier cases left behind (memory, thread pools) out
    of the figures. ``fn`` and its arguments must pickle; ``fn`` must be importable.
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def summarize(samples_s: Sequence[float]) -> dict[str, float]:
    """Median, min, p90 and mean in milliseconds."""
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "min_ms": float(ms.min()),
        "p90_ms": float(np.percentile(ms, 90)),
        "mean_ms": float(ms.mean()),
        "repeat": len(ms),
    }


def time_callable(fn: Callable[[], Any], *, warmup: int = 3, repeat: int = 30) -> dict[str, float]:
    """Time ``fn()`` ``repeat`` times after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return summarize(samples)


def time_torch(model: Any, inputs: Sequence[Any], **kwargs: Any) -> dict[str, float]:
    """Latency of a PyTorch model in inference mode on the CPU."""
    import torch

    tensors = [torch.as_tensor(x) for x in inputs]
    model = model.eval()
    with torch.inference_mode():
        return time_callable(lambda: model(*tensors), **kwargs)


def onnxruntime_runner(
    model: Any, inputs: Sequence[np.ndarray], *, spinning: bool = True
) -> Callable[[], Any]:
    """A call of an ONNX model (path, bytes or ``ModelProto``) in ONNX Runtime on ``inputs``,
    all graph optimisations on, one intra-op thread per core; ``spinning=False`` sets
    ``session.intra_op.allow_spinning`` to 0 (its workers sleep as soon as a call ends)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = available_cores()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feed = {i.name: np.asarray(x) for i, x in zip(session.get_inputs(), inputs, strict=True)}
    return lambda: session.run(None, feed)


def time_onnxruntime(model: Any, inputs: Sequence[np.ndarray], **kwargs: Any) -> dict[str, float]:
    """Latency of an ONNX model in ONNX Runtime (see :func:`onnxruntime_runner`)."""
    return time_callable(onnxruntime_runner(model, inputs), **kwargs)


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
