"""Latency of the runtimes tvm_sparse is compared with: PyTorch and ONNX Runtime on the CPU.

``tvm-sparse bench`` and the built-in example time them beside a compiled model, each figure a
median over repeated calls in the calling process (``benchmarks/harness.py`` builds on these).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .targets.host import available_cores
from .timing import summarize

__all__ = [
    "onnxruntime_runner",
    "time_callable",
    "time_onnxruntime",
    "time_torch",
]


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
