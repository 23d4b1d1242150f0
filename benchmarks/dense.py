"""Dense models: tvm_sparse against PyTorch and ONNX Runtime, measured in one run.

Writes ``benchmarks/results/dense.json`` and ``dense.md``::

    python benchmarks/dense.py [--repeat 20] [--rounds 5] [--out benchmarks/results]

The runtimes are timed in turns; each latency is the fastest turn's median
(``harness.interleave``), each model in a process of its own (``in_fresh_process``).
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch

import tvm_sparse
from tvm_sparse.baselines import onnxruntime_runner, time_callable, time_torch

from architectures import (
    BertEncoder,
    BertLayer,
    ConvNeXt,
    MobileNetV2,
    ResNet18,
    ViT,
    randomize_batch_norm,
)
from harness import in_fresh_process, interleave, write_results

MODELS = {
    "resnet18 1x3x224x224": (lambda: randomize_batch_norm(ResNet18()), (1, 3, 224, 224)),
    "mobilenetv2 1x3x224x224": (lambda: randomize_batch_norm(MobileNetV2()), (1, 3, 224, 224)),
    "bert-base layer 1x128x768": (BertLayer, (1, 128, 768)),
    "bert-mini 1x128x256": (BertEncoder, (1, 128, 256)),
    "vit-tiny 1x3x224x224": (ViT, (1, 3, 224, 224)),
    "convnext-atto 1x3x224x224": (ConvNeXt, (1, 3, 224, 224)),
}


def _onnx(model: torch.nn.Module, x: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, input_names=["x"], dynamo=False)
    return buffer.getvalue()


def measure(name: str, *, repeat: int, rounds: int, target: str) -> dict:
    """One row: compile ``MODELS[name]``, check it against PyTorch, time the three runtimes."""
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    model, x = factory().eval(), torch.randn(*shape)
    print(f"[dense] {name}: compiling", flush=True)
    start = time.perf_counter()
    compiled = tvm_sparse.compile(model, target, example_inputs=(x,), sparsity="off")
    compile_s = time.perf_counter() - start
    with torch.no_grad():
        expected = model(x).numpy()
    error = float(np.abs(compiled(x.numpy()) - expected).max())
    print(f"[dense] {name}: measuring", flush=True)
    ort_call = onnxruntime_runner(_onnx(model, x), [x.numpy()])
    ms = interleave(
        {
            "tvm": lambda: compiled.benchmark(x.numpy(), repeat=repeat),
            "torch": lambda: time_torch(model, (x,), repeat=repeat),
            "ort": lambda: time_callable(ort_call, repeat=repeat),
        },
        rounds=rounds,
    )
    row = {
        "model": name,
        "tvm_sparse_ms": ms["tvm"],
        "pytorch_ms": ms["torch"],
        "onnxruntime_ms": ms["ort"],
        "vs_pytorch": ms["torch"] / ms["tvm"],
        "vs_onnxruntime": ms["ort"] / ms["tvm"],
        "compile_s": compile_s,
        "max_abs_error": error,
    }
    print(f"[dense] {row}", flush=True)
    return row


def run(repeat: int, rounds: int, out_dir: str, target: str) -> list[dict]:
    rows = [
        in_fresh_process(measure, name, repeat=repeat, rounds=rounds, target=target)
        for name in MODELS
    ]
    write_results(
        "dense",
        rows,
        ["model", "tvm_sparse_ms", "pytorch_ms", "onnxruntime_ms", "vs_pytorch",
         "vs_onnxruntime", "compile_s", "max_abs_error"],
        out_dir=out_dir,
        notes=(
            f"Median latency in ms, the fastest of {rounds} turns of {repeat} calls; "
            "vs_X is X's latency over tvm_sparse's (above 1: faster)."
        ),
    )  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="calls per turn")
    parser.add_argument("--rounds", type=int, default=5, help="turns of each runtime")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--target", default="x86")
    args = parser.parse_args()
    run(args.repeat, args.rounds, args.out, args.target)


if __name__ == "__main__":
    main()
