"""How much of the FLOP reduction pruning gives turns into speed, per architecture and pattern.

    python benchmarks/matrix.py [--archs ResNet-18,ConvNeXt] [--patterns channel,2:4] \\
        [--target x86] [--out benchmarks/results]

Writes ``matrix.json`` and ``matrix.md``. Each cell is a reference architecture (random weights,
batch norms with random statistics) pruned by ``tvm_sparse.prune`` and compiled the way a user
compiles it (``sparsity="auto"``, layers timed on this machine) with the end-to-end speed check
off, so that the compiler's own per-layer choices are timed. In one fresh process per cell the
build is checked against PyTorch and timed against the dense build of the same model
(``sparsity="off"``) by the project's timing policy (interleaved rounds). The FLOP reduction
counts every matmul and convolution (attention included) of the model with its pruned channels
removed, less the multiply-adds of the zeros left in its weights.

Patterns: ``channel`` 50%, ``unstructured`` 90%, ``16x1`` blocks 90%, ``2:4``, ``preset`` (the
target preset's own pruning defaults) and, for the transformers, ``heads`` 50%.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from collections import Counter

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import tvm_sparse
from tvm_sparse.prune.physical import remove_pruned_channels
from tvm_sparse.timing import TimingPolicy, compare

from architectures import (
    BertEncoder,
    ConvNeXt,
    MobileNetV2,
    ResNet18,
    ViT,
    randomize_batch_norm,
)
from harness import in_fresh_process, max_relative_error, write_results

ARCHS = ("ResNet-18", "MobileNetV2", "ConvNeXt", "ViT", "BERT")
TRANSFORMERS = ("ViT", "BERT")
PATTERNS = ("channel", "unstructured", "16x1", "2:4", "preset", "heads")
POLICY = TimingPolicy(min_rounds=10, max_rounds=30, budget_s=8.0, round_ms=30.0)


def _arch(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name == "BERT":
        return BertEncoder().eval(), torch.randn(1, 128, 256)
    model = {"ResNet-18": ResNet18, "MobileNetV2": MobileNetV2, "ConvNeXt": ConvNeXt, "ViT": ViT}
    return randomize_batch_norm(model[name]()).eval(), torch.randn(1, 3, 224, 224)


def _prune(model: nn.Module, x: torch.Tensor, pattern: str, target: str) -> None:
    kwargs = {
        "channel": {"pattern": "channel", "sparsity": 0.5},
        "heads": {"pattern": "head", "sparsity": 0.5},
        "unstructured": {"pattern": "unstructured", "sparsity": 0.9},
        "16x1": {"pattern": "block", "block_shape": (16, 1), "sparsity": 0.9},
        "2:4": {"pattern": "2:4"},
        "preset": {"target": target},
    }[pattern]
    tvm_sparse.prune(model, (x,), **kwargs)


def _layer_flops(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """All matmul and conv FLOPs of one forward pass, and those spent on zero weights."""
    zero = []

    def hook(module, args, output):
        w = module.weight.detach()
        positions = output.numel() // (output.shape[-1] if isinstance(module, nn.Linear) else
                                       output.shape[1])  # fmt: skip
        # each zero weight is one multiply-add per output position
        zero.append(2.0 * positions * float(w.eq(0).sum()))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d))]  # fmt: skip
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        for h in handles:
            h.remove()
    return float(counter.get_total_flops()), sum(zero)


def flop_reduction(dense: nn.Module, pruned: nn.Module, x: torch.Tensor) -> float:
    total, _ = _layer_flops(dense, x)
    shrunk = copy.deepcopy(pruned)
    try:
        remove_pruned_channels(shrunk, (x,))
    except Exception as err:  # noqa: BLE001 - count the zeros in place instead
        print(f"[matrix] channels not removable for counting ({err})", flush=True)
        shrunk = pruned
    left, on_zeros = _layer_flops(shrunk, x)
    return total / max(left - on_zeros, 1.0)


def measure(arch: str, pattern: str, target: str) -> dict:
    """One cell in this process: prune, compile, check against PyTorch, time against dense."""
    model, x = _arch(arch)
    dense_model = copy.deepcopy(model)
    _prune(model, x, pattern, target)
    reduction = flop_reduction(dense_model, model, x)
    with torch.no_grad():
        expected = model(x).numpy()
    start = time.perf_counter()
    chosen = tvm_sparse.compile(
        model, target, example_inputs=(x,), verify_speed=False, measure_layers=True
    )
    compile_s = time.perf_counter() - start
    dense = tvm_sparse.compile(model, target, example_inputs=(x,), sparsity="off")
    xs = x.numpy()
    error = max_relative_error([chosen, dense], xs, expected)

    def pytorch():
        with torch.no_grad():
            model(x)

    result = compare(
        {"compile": lambda: chosen(xs), "dense": lambda: dense(xs), "pytorch": pytorch},
        reference="dense",
        policy=POLICY,
    )
    kinds = Counter(r.kernel for r in chosen.report.rows if r.pattern != "dense")
    return {
        "speedup": result.speedup["compile"],
        "vs_pytorch": result.ms["pytorch"] / result.ms["compile"],
        "ms": result.ms,
        "flop_reduction": reduction,
        "error": error,
        "compile_s": compile_s,
        "kernels": ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())) or "dense",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--patterns", default=",".join(PATTERNS))
    parser.add_argument("--target", default="x86")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    os.environ["TVM_SPARSE_VERIFY_SPEED"] = "0"
    cache = tempfile.TemporaryDirectory(prefix="matrix_cache_")
    os.environ["XDG_CACHE_HOME"] = cache.name
    rows = []
    for arch in args.archs.split(","):
        for pattern in args.patterns.split(","):
            if pattern == "heads" and arch not in TRANSFORMERS:
                continue
            try:
                r = in_fresh_process(measure, arch, pattern, args.target)
            except Exception as err:  # noqa: BLE001 - a failing cell is a row, not the end
                print(f"[matrix] {arch} {pattern}: failed ({err})", flush=True)
                rows.append({"model": arch, "pattern": pattern, "speedup": None, "vs_pytorch": None,
                             "flop_reduction": None, "share_of_flops": None,
                             "dense_ms": None, "pruned_ms": None, "max_rel_error": None,
                             "kernels": f"failed: {err}"[:200], "compile_s": None})  # fmt: skip
                continue
            row = {
                "model": arch,
                "pattern": pattern,
                "speedup": r["speedup"],
                "vs_pytorch": r["vs_pytorch"],
                "flop_reduction": r["flop_reduction"],
                "share_of_flops": r["speedup"] / r["flop_reduction"],
                "dense_ms": r["ms"]["dense"],
                "pruned_ms": r["ms"]["compile"],
                "max_rel_error": r["error"],
                "kernels": r["kernels"],
                "compile_s": r["compile_s"],
            }
            rows.append(row)
            print(f"[matrix] {row}", flush=True)
    write_results(
        "matrix",
        rows,
        list(rows[0]),
        out_dir=args.out,
        notes=f"target {args.target}; speedup: the build tvm_sparse.compile returns "
        "(sparsity='auto', end-to-end check off) over the dense build of the same model, "
        "timed in one process by tvm_sparse.timing.compare (interleaved rounds, medians in "
        "ms); vs_pytorch: PyTorch's time (eager, no_grad, its default threads) over the "
        "returned build's, in the same rounds; flop_reduction: dense FLOPs over the pruned "
        "model's (channels removed, zeros not counted); share_of_flops: speedup / "
        "flop_reduction.",
    )


if __name__ == "__main__":
    main()
