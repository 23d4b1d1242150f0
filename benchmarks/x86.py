"""Dense x86 kernels and models: tvm_sparse against ONNX Runtime and PyTorch, beside the roofline.

Every row is measured in one process with the runtimes taking turns (``--rounds`` turns of
``--repeat`` calls each; the fastest turn's median, ``harness.interleave``), each case in a
process of its own, so the ratios hold on a shared host even when absolute times do not.
Each row also gives the GFLOP/s reached and the machine's limit for it: the measured peak FLOP/s
(``benchmarks/roofline.py``), or the bandwidth bound for memory-bound kernels (GEMV)::

    python benchmarks/x86.py [--repeat 10] [--rounds 5] [--out benchmarks/results] \\
        [--only linear,conv]

Writes ``x86.json`` and ``x86.md``.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch
from roofline import roofline

import tvm_sparse
from tvm_sparse.baselines import time_callable
from tvm_sparse.compiled_model import use_all_cores
from tvm_sparse.targets import get_preset

from architectures import BertLayer, MobileNetV2, ResNet18, randomize_batch_norm
from harness import in_fresh_process, interleave, write_results


class _Conv(torch.nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, stride: int, groups: int = 1):
        super().__init__(
            torch.nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            torch.nn.BatchNorm2d(cout),
            torch.nn.ReLU(),
        )


_BERT_FLOPS = 2 * 128 * 768 * 768 * 12 + 2 * 2 * 128 * 128 * 768


def _cases() -> dict[str, tuple]:
    """name -> (model factory, input shape, FLOPs, bytes that must move at least)."""

    def conv(cin, cout, k, s, hw, groups=1):
        out = hw // s
        flops = 2 * cin // groups * cout * k * k * out * out
        return (
            lambda: randomize_batch_norm(_Conv(cin, cout, k, s, groups)),
            (1, cin, hw, hw),
            flops,
            4 * (cin * hw * hw + cout * out * out + cout * cin // groups * k * k),
        )

    return {
        "linear 128x768 @ 3072x768": (
            lambda: torch.nn.Linear(768, 3072),
            (128, 768),
            2 * 128 * 768 * 3072,
            4 * (128 * 768 + 3072 * 768 + 128 * 3072),
        ),
        "linear (GEMV) 1x768 @ 3072x768": (
            lambda: torch.nn.Linear(768, 3072),
            (1, 768),
            2 * 768 * 3072,
            4 * (768 + 3072 * 768 + 3072),
        ),
        "conv 3x3 64->64 56x56": conv(64, 64, 3, 1, 56),
        "conv 3x3 256->256 14x14": conv(256, 256, 3, 1, 14),
        "conv 3x3 s2 64->128 56x56": conv(64, 128, 3, 2, 56),
        "conv 1x1 96->24 56x56": conv(96, 24, 1, 1, 56),
        "conv 1x1 s2 64->128 56x56": conv(64, 128, 1, 2, 56),
        "conv 7x7 s2 3->64 224x224": conv(3, 64, 7, 2, 224),
        "depthwise 3x3 144 56x56": conv(144, 144, 3, 1, 56, groups=144),
        "depthwise 3x3 s2 96 112x112": conv(96, 96, 3, 2, 112, groups=96),
        "grouped 3x3 g4 64->64 28x28": conv(64, 64, 3, 1, 28, groups=4),
        "resnet18 1x3x224x224": (
            lambda: randomize_batch_norm(ResNet18()), (1, 3, 224, 224), 3.64e9, 0
        ),
        "mobilenetv2 1x3x224x224": (
            lambda: randomize_batch_norm(MobileNetV2()), (1, 3, 224, 224), 0.6e9, 0
        ),
        # 12 x 768^2 weights per token (QKV, output, two FFN), two 128x128x768 attention matmuls
        "bert-base layer 1x128x768": (BertLayer, (1, 128, 768), _BERT_FLOPS, 0),
    }  # fmt: skip


def _ort_session(model: torch.nn.Module, x: torch.Tensor):
    import onnxruntime as ort

    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, input_names=["x"], dynamo=False)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])


def measure(name: str, limits: dict, *, repeat: int, rounds: int, target: str) -> dict:
    """One row: compile case ``name``, check it against PyTorch, time the three runtimes."""
    factory, shape, flops, nbytes = _cases()[name]
    torch.manual_seed(0)
    model, x = factory().eval(), torch.randn(*shape)
    start = time.perf_counter()
    compiled = tvm_sparse.compile(model, target, example_inputs=(x,), sparsity="off")
    compile_s = time.perf_counter() - start
    session = _ort_session(model, x)
    xn = x.numpy()
    with torch.no_grad():
        error = float(np.abs(compiled(xn) - model(x).numpy()).max())

    def torch_call():
        with torch.inference_mode():
            model(x)

    ms = interleave(
        {
            "tvm": lambda: time_callable(lambda: compiled(xn), repeat=repeat),
            "ort": lambda: time_callable(lambda: session.run(None, {"x": xn}), repeat=repeat),
            "torch": lambda: time_callable(torch_call, repeat=repeat),
        },
        rounds=rounds,
    )
    bound_s = max(flops / (limits["peak_gflops"] * 1e9), nbytes / (limits["bandwidth_gbs"] * 1e9))
    row = {
        "case": name,
        "tvm_sparse_ms": ms["tvm"],
        "onnxruntime_ms": ms["ort"],
        "pytorch_ms": ms["torch"],
        "vs_onnxruntime": ms["ort"] / ms["tvm"],
        "vs_pytorch": ms["torch"] / ms["tvm"],
        "tvm_gflops": flops / ms["tvm"] / 1e6,
        "roofline_ms": bound_s * 1e3,
        "of_roofline": bound_s * 1e3 / ms["tvm"],
        "compile_s": compile_s,
        "max_abs_error": error,
    }
    print(f"[x86] {row}", flush=True)
    return row


def run(
    *, repeat: int, rounds: int, out_dir: str, target: str, only: list[str] | None = None
) -> list[dict]:
    limits = roofline(target)
    print(f"[x86] roofline {limits}", flush=True)
    rows = [
        in_fresh_process(measure, name, limits, repeat=repeat, rounds=rounds, target=target)
        for name in _cases()
        if not only or any(word in name for word in only)
    ]
    write_results(
        "x86",
        rows,
        ["case", "tvm_sparse_ms", "onnxruntime_ms", "pytorch_ms", "vs_onnxruntime", "vs_pytorch",
         "tvm_gflops", "roofline_ms", "of_roofline", "compile_s", "max_abs_error"],
        out_dir=out_dir,
        notes=(
            f"Roofline on this machine: {limits['peak_gflops']:.1f} GFLOP/s peak fp32, "
            f"{limits['bandwidth_gbs']:.1f} GB/s memory bandwidth ({limits['cores']} cores). "
            "vs_X is X's latency over tvm_sparse's (above 1: tvm_sparse faster); "
            "of_roofline is the roofline time over tvm_sparse's (1.0: at the limit). Model "
            "FLOPs are nominal (direct convolution); model rows have no bandwidth bound. "
            "ResNet-18's 3x3 stride-1 convs run as Winograd F(2x2, 3x3), 2.25x fewer "
            "multiplies than the nominal count, so its GFLOP/s and of_roofline can pass the "
            "peak."
        ),
    )  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="calls per turn")
    parser.add_argument("--rounds", type=int, default=5, help="turns of each runtime")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--target", default="x86")
    parser.add_argument("--only", default="", help="comma-separated words a case name must hold")
    args = parser.parse_args()
    # before any kernel runs: the thread pool reads its size once
    use_all_cores(get_preset(args.target).tvm_target())
    only = [w for w in args.only.split(",") if w]
    run(
        repeat=args.repeat,
        rounds=args.rounds,
        out_dir=args.out,
        target=args.target,
        only=only or None,
    )


if __name__ == "__main__":
    main()
