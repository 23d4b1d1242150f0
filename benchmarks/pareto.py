"""Accuracy against measured latency, per pruning pattern and sparsity, on a real task.

A small CNN is trained on scikit-learn's bundled digits (8x8 images, 10 classes), pruned by
``tvm_sparse.prune`` at several sparsities per pattern with a gradual (cubic) schedule and
fine-tuning, then compiled with ``tvm_sparse.compile`` and timed. Writes ``pareto.csv``,
``pareto.md`` and, when matplotlib is installed (the ``bench`` extra), ``pareto.png``.

    python benchmarks/pareto.py [--out benchmarks/results] [--quick]

``--no-compile`` times PyTorch instead (the ``runtime`` column says which).
"""

from __future__ import annotations

import argparse
import copy
import csv
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import tvm_sparse
from tvm_sparse.baselines import time_torch
from tvm_sparse.prune import Pruner

from harness import interleave

logger = logging.getLogger("tvm_sparse.benchmarks.pareto")

#: pattern label -> (pattern, options, sparsities); ``None`` sparsity: implied by the pattern.
#: The first conv (9 weights per filter) is left dense for weight patterns, as usual.
_FIRST = {"ignored_layers": ["features.0.0"]}
GRID: dict[str, tuple[str, dict, tuple[float | None, ...]]] = {
    "channel": ("channel", {"round_to": 8}, (0.25, 0.5, 0.75)),
    "block16x1": ("block", {"block_shape": (16, 1), **_FIRST}, (0.5, 0.75, 0.9)),
    "2:4": ("n:m", {"n_m": (2, 4), **_FIRST}, (None,)),
    "unstructured": ("unstructured", _FIRST, (0.5, 0.75, 0.9)),
}


class DigitsCNN(nn.Module):
    """Three 3x3 conv blocks with batch norm and a linear classifier, for 8x8 digits."""

    def __init__(self, width: int = 32, num_classes: int = 10):
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
            )

        self.features = nn.Sequential(
            block(1, width),
            block(width, 2 * width),
            nn.MaxPool2d(2),
            block(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


@dataclass
class Point:
    pattern: str
    sparsity: float
    accuracy: float
    latency_ms: float
    runtime: str
    params: int
    mflops: float


def load_data(seed: int = 0):
    """Digits as ``(train_x, train_y, test_x, test_y)``: 80/20 split, scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    split = int(0.8 * len(y))
    train, test = order[:split], order[split:]
    return x[train], y[train], x[test], y[test]


def train(model, data, *, epochs: int, lr: float = 1e-3, pruner: Pruner | None = None, seed=0):
    """Adam with cosine decay; with a pruner, one pruning step at the end of each of its steps."""
    train_x, train_y = data[0], data[1]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    steps_at = set()
    if pruner is not None:  # prune over the first half, fine-tune with the masks in the second
        span = max(epochs // 2, 1)
        steps_at = {
            round((i + 1) * span / pruner.total_steps) - 1 for i in range(pruner.total_steps)
        }
    for epoch in range(epochs):
        model.train()
        for batch in torch.randperm(len(train_y), generator=generator).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(train_x[batch]), train_y[batch]).backward()
            optimizer.step()
        scheduler.step()
        if epoch in steps_at:
            pruner.step()
    model.eval()
    return model


@torch.no_grad()
def accuracy(model, data) -> float:
    model.eval()
    return float((model(data[2]).argmax(1) == data[3]).float().mean() * 100)


def latency(model, example: torch.Tensor, *, compile_model: bool = True) -> tuple[float, str]:
    """Median latency in ms: compiled by tvm_sparse for x86, or PyTorch's with ``--no-compile``.

    The compiled output is checked against the pruned PyTorch model before it is timed.
    ``tvm_sparse.compile``'s speed check (on by default for pruned models) has already chosen
    the faster of the pruned and the dense build; its note is logged.
    """
    if not compile_model:
        return time_torch(model, (example,), repeat=50)["median_ms"], "torch"
    compiled = tvm_sparse.compile(model, "x86", example_inputs=(example,))
    with torch.no_grad():
        expected = model(example).numpy()
    np.testing.assert_allclose(compiled(example.numpy()), expected, rtol=1e-4, atol=1e-4)
    for note in compiled.report.notes:
        if note.startswith("speed check"):
            logger.info("%s", note[:160])
    # best of three medians: a burst of other work on the host lands in one round, not all
    ms = interleave({"tvm": lambda: compiled.benchmark(example, repeat=30)}, rounds=3)
    return ms["tvm"], "tvm_sparse"


def run(
    *,
    grid: dict = GRID,
    epochs: int = 30,
    finetune_epochs: int = 16,
    prune_steps: int = 4,
    batch: int = 64,
    seed: int = 0,
    compile_model: bool = True,
) -> list[Point]:
    """Train dense, then prune and fine-tune each (pattern, sparsity); return measured points."""
    torch.manual_seed(seed)
    data = load_data(seed)
    dense = train(DigitsCNN(), data, epochs=epochs, seed=seed)
    example = data[2][:batch]
    points = []

    def record(label, sparsity, model, result=None):
        ms, runtime = latency(model, example, compile_model=compile_model)
        params = result.params_after if result else sum(p.numel() for p in model.parameters())
        flops = (result.flops_after if result else _dense_flops(model, example)) / 1e6
        points.append(Point(label, sparsity, accuracy(model, data), ms, runtime, params, flops))
        logger.info("%s", points[-1])

    record("dense", 0.0, dense)
    for label, (pattern, options, sparsities) in grid.items():
        for sparsity in sparsities:
            model = copy.deepcopy(dense)
            pruner = Pruner(
                model,
                (example,),
                pattern=pattern,
                sparsity=sparsity,
                schedule="cubic" if sparsity is not None else "oneshot",
                total_steps=prune_steps if sparsity is not None else 1,
                **options,
            )
            train(model, data, epochs=finetune_epochs, lr=5e-4, pruner=pruner, seed=seed + 1)
            result = pruner.finalize()
            record(label, sparsity if sparsity is not None else 0.5, model, result)
    return points


def _dense_flops(model, example) -> int:
    from tvm_sparse.prune import measure

    return measure(model, (example,)).flops


def write(points: list[Point], out: Path) -> None:
    """``pareto.csv``, ``pareto.md`` and, with matplotlib, ``pareto.png``."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [asdict(p) for p in points]
    with open(out / "pareto.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "| pattern | sparsity | accuracy % | latency ms | runtime | params | MFLOPs |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {p.pattern} | {p.sparsity:.2f} | {p.accuracy:.2f} | {p.latency_ms:.4f} | "
        f"{p.runtime} | {p.params} | {p.mflops:.2f} |"
        for p in points
    ]
    (out / "pareto.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install tvm_sparse[bench]): no plot")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for label in dict.fromkeys(p.pattern for p in points):
        series = sorted((p for p in points if p.pattern == label), key=lambda p: p.latency_ms)
        ax.plot([p.latency_ms for p in series], [p.accuracy for p in series], "o-", label=label)
        for p in series:
            ax.annotate(f"{p.sparsity:.2f}", (p.latency_ms, p.accuracy), fontsize=7)
    ax.set_xlabel(f"latency, ms ({points[0].runtime}, batch of the example)")
    ax.set_ylabel("test accuracy, %")
    ax.set_title("digits CNN: accuracy against latency per pruning pattern")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--quick", action="store_true", help="fewer epochs and sparsities")
    parser.add_argument("--no-compile", action="store_true", help="time PyTorch only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    options = {"compile_model": not args.no_compile}
    if args.quick:
        options.update(
            epochs=15,
            finetune_epochs=8,
            grid={k: (p, o, s[1:2] if len(s) > 1 else s) for k, (p, o, s) in GRID.items()},
        )
    points = run(**options)
    write(points, args.out)
    print((args.out / "pareto.md").read_text())


if __name__ == "__main__":
    main()
