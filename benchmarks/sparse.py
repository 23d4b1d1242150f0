"""Pruned models against their dense builds: BERT-base FFN linear layers and a half-channel ResNet.

    python benchmarks/sparse.py [--repeat 20] [--rounds 5] [--out benchmarks/results] [--target x86]

Writes ``sparse.json`` and ``sparse.md``. Each row is one model compiled twice by
``tvm_sparse.compile``: ``sparsity="auto"`` (what a user gets: the compiler picks sparse or
shrunk kernels only where its cost model says they win) and ``sparsity="off"`` (dense), both
checked against PyTorch, then timed beside PyTorch and ONNX Runtime running the same (pruned,
dense-stored) model. Each case runs in a process of its own (``in_fresh_process``), the four
runtimes in turns, and each latency is the fastest turn's median (``interleave``). Ratios hold
on a shared host; absolute times do not. The roofline (``roofline.py``), measured in the same
run, stands beside them.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import onnx
import torch
from roofline import roofline

import tvm_sparse
from tvm_sparse.baselines import onnxruntime_runner, time_callable, time_torch
from tvm_sparse.compiled_model import use_all_cores
from tvm_sparse.measure import block_mask
from tvm_sparse.targets import get_preset

from architectures import ResNet18, randomize_batch_norm
from harness import in_fresh_process, interleave, write_results

N, K = 3072, 768  # BERT-base FFN: 768 -> 3072
FFN_CASES = [
    # (rows of activations, pattern)
    (128, (16, 1)),
    (128, (1, 4)),
    (128, "unstructured"),
    (1, (16, 1)),
    (1, "unstructured"),
]


def _ffn(pattern, density: float, rng: np.random.Generator) -> torch.nn.Module:
    linear = torch.nn.Linear(K, N, bias=False)
    if pattern == "unstructured":
        tvm_sparse.prune(linear, (torch.randn(1, K),), pattern="unstructured", sparsity=1 - density)
    else:
        mask = block_mask(N, K, pattern, density, rng)
        with torch.no_grad():
            linear.weight.mul_(torch.from_numpy(mask.astype("float32")))
    return linear.eval()


def _onnx(model: torch.nn.Module, x: torch.Tensor) -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, input_names=["x"], dynamo=False)
    return onnx.load_from_string(buffer.getvalue())


def measure(
    name: str, model: torch.nn.Module, x: torch.Tensor, *, target: str, repeat: int, rounds: int
):
    """One row: compile sparse and dense, check both against PyTorch, time four runtimes."""
    with torch.no_grad():
        expected = model(x).numpy()
    start = time.perf_counter()
    sparse = tvm_sparse.compile(model, target, example_inputs=(x,), sparsity="auto")
    compile_s = time.perf_counter() - start
    dense = tvm_sparse.compile(model, target, example_inputs=(x,), sparsity="off")
    errors = [float(np.abs(m(x.numpy()) - expected).max()) for m in (sparse, dense)]
    np.testing.assert_allclose(sparse(x.numpy()), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dense(x.numpy()), expected, rtol=1e-4, atol=1e-4)
    inputs = [x.numpy()]
    ort_call = onnxruntime_runner(_onnx(model, x), inputs)
    ms = interleave(
        {
            "sparse": lambda: sparse.benchmark(*inputs, repeat=repeat),
            "dense": lambda: dense.benchmark(*inputs, repeat=repeat),
            "torch": lambda: time_torch(model, (x,), repeat=repeat),
            "ort": lambda: time_callable(ort_call, repeat=repeat),
        },
        rounds=rounds,
    )
    sparse_rows = [r for r in sparse.report.rows if r.pattern != "dense"]
    kernels = sorted({r.kernel.split(" ")[0] for r in sparse_rows}) or ["dense"]
    row = {
        "case": name,
        "tvm_sparse_sparse_ms": ms["sparse"],
        "tvm_sparse_dense_ms": ms["dense"],
        "pytorch_dense_ms": ms["torch"],
        "onnxruntime_dense_ms": ms["ort"],
        "vs_tvm_dense": ms["dense"] / ms["sparse"],
        "vs_pytorch": ms["torch"] / ms["sparse"],
        "vs_onnxruntime": ms["ort"] / ms["sparse"],
        "kernels": ", ".join(kernels),
        "sparse_mflop": sparse.report.total_flops / 1e6,
        "dense_mflop": dense.report.total_flops / 1e6,
        "compile_s": compile_s,
        "max_abs_error": max(errors),
    }
    print(f"[sparse] {row}", flush=True)
    return row


def run(*, repeat: int, rounds: int, out_dir: str, target: str, density: float = 0.1) -> list[dict]:
    limits = roofline(target)
    print(f"[sparse] roofline {limits}", flush=True)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    rows = []
    for m, pattern in FFN_CASES:
        label = pattern if isinstance(pattern, str) else f"{pattern[0]}x{pattern[1]} blocks"
        name = f"FFN {m}x768 @ 768x3072, {1 - density:.0%} {label}"
        rows.append(in_fresh_process(measure, name, _ffn(pattern, density, rng), torch.randn(m, K),
                                     target=target, repeat=repeat, rounds=rounds))  # fmt: skip
    resnet = randomize_batch_norm(ResNet18()).eval()
    x = torch.randn(1, 3, 224, 224)
    tvm_sparse.prune(resnet, (x,), pattern="channel", sparsity=0.5)
    rows.append(in_fresh_process(measure, "ResNet-18 1x3x224x224, 50% channels", resnet, x,
                                 target=target, repeat=repeat, rounds=rounds))  # fmt: skip
    for row in rows:  # the work the sparse build does (nonzero weights only), beside the peak
        row["sparse_gflops"] = row["sparse_mflop"] / row["tvm_sparse_sparse_ms"]  # MFLOP/ms
        row["of_peak"] = row["sparse_gflops"] / limits["peak_gflops"]
    write_results(
        "sparse",
        rows,
        ["case", "tvm_sparse_sparse_ms", "tvm_sparse_dense_ms", "pytorch_dense_ms",
         "onnxruntime_dense_ms", "vs_tvm_dense", "vs_pytorch", "vs_onnxruntime", "kernels",
         "sparse_gflops", "of_peak", "max_abs_error"],
        out_dir=out_dir,
        notes="Median ms of one call; vs_X is X's time over tvm_sparse sparse (above 1: faster). "
        "PyTorch and ONNX Runtime run the same pruned weights stored dense. "
        f"Roofline on this machine: {limits['peak_gflops']:.1f} GFLOP/s peak fp32, "
        f"{limits['bandwidth_gbs']:.1f} GB/s memory bandwidth ({limits['cores']} cores). "
        "sparse_gflops is the sparse build's FLOPs (those of nonzero weights only, two per "
        "multiply-add) over its latency; of_peak is that over the peak. Batch-1 rows are "
        "bound by memory, not FLOPs. ResNet-18's 3x3 stride-1 convs run as Winograd "
        "F(2x2, 3x3), 2.25x fewer multiplies than the nominal count, so its of_peak can pass 1.",
    )  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="calls per turn")
    parser.add_argument("--rounds", type=int, default=5, help="turns of each runtime")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--target", default="x86")
    args = parser.parse_args()
    # before any kernel runs (the roofline's): the thread pool reads its size once
    use_all_cores(get_preset(args.target).tvm_target())
    run(repeat=args.repeat, rounds=args.rounds, out_dir=args.out, target=args.target)


if __name__ == "__main__":
    main()
