"""The built-in example: prune two models, compile them dense and sparse, compare with PyTorch.

``tvm-sparse example`` runs it. Its models have random weights (``_example_models``), so it
needs no download: a BERT-base feed-forward block pruned to 90% in 16x1 blocks, and a ResNet-18
with half of its channels pruned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ._example_models import BertFFN, ResNet18, randomize_batch_norm
from .baselines import time_torch

__all__ = ["run_example"]


def _case(name, model, x, prune_kwargs):
    return {"name": name, "model": model, "input": x, "prune": prune_kwargs}


def run_example(
    target: str = "x86", *, progress: Callable[[str], None] = print, repeat: int = 20
) -> dict[str, Any]:
    """Prune, compile dense and sparse, check against PyTorch, print reports and a latency table.

    Returns
    -------
    dict
        Per model: latencies (ms) of PyTorch, tvm_sparse dense and tvm_sparse sparse, and the
        maximum absolute difference from PyTorch.
    """
    import tvm_sparse

    torch.manual_seed(0)
    cases = [
        _case(
            "bert-ffn 128x768, 90% 16x1 blocks",
            BertFFN(),
            torch.randn(128, 768),
            {"pattern": "block", "block_shape": (16, 1), "sparsity": 0.9},
        ),
        _case(
            "resnet-18 1x3x224x224, 50% channels",
            randomize_batch_norm(ResNet18()),
            torch.randn(1, 3, 224, 224),
            {"pattern": "channel", "sparsity": 0.5},
        ),
    ]
    results = {}
    for case in cases:
        model, x = case["model"].eval(), case["input"]
        progress(f"pruning {case['name']}")
        tvm_sparse.prune(model, (x,), **case["prune"])
        with torch.no_grad():
            expected = model(x).numpy()
        progress(f"compiling {case['name']} dense and sparse for {target}")
        dense = tvm_sparse.compile(model, target, example_inputs=(x,), sparsity="off")
        sparse = tvm_sparse.compile(model, target, example_inputs=(x,), sparsity="auto")
        error = float(np.abs(sparse(x.numpy()) - expected).max())
        progress(f"measuring {case['name']}")
        row = {
            "pytorch_ms": time_torch(model, (x,), repeat=repeat)["median_ms"],
            "tvm_dense_ms": dense.benchmark(x.numpy(), repeat=repeat)["median_ms"],
            "tvm_sparse_ms": sparse.benchmark(x.numpy(), repeat=repeat)["median_ms"],
            "max_abs_error": error,
        }
        results[case["name"]] = row
        print(f"\n## {case['name']}: compile report (sparse build)\n")
        print(sparse.report.table())
    print("\n## latency (median ms, one run on this machine)\n")
    header = ["model", "PyTorch", "tvm_sparse dense", "tvm_sparse sparse", "vs PyTorch"]
    print("| " + " | ".join([*header, "vs dense", "max err"]) + " |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['pytorch_ms']:.2f} | {r['tvm_dense_ms']:.2f} | "
            f"{r['tvm_sparse_ms']:.2f} | {r['pytorch_ms'] / r['tvm_sparse_ms']:.2f}x | "
            f"{r['tvm_dense_ms'] / r['tvm_sparse_ms']:.2f}x | {r['max_abs_error']:.1e} |"
        )
    return results
