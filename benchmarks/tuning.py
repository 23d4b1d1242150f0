"""What tuning gains: untuned default against tuned build, per workload, with trials and time.

    python benchmarks/tuning.py [--trials 16] [--repeat 50] [--out benchmarks/results]
                                [--cache DIR] [--target x86]

Each model is compiled without tuning records, tuned with ``tvm_sparse.autotune`` into a cache
(a fresh temporary one unless ``--cache`` is given, so the user's cache is left alone), compiled
again with the records, checked against PyTorch, and both builds are timed interleaved, each
case in a process of its own. Writes ``tuning.json`` and ``tuning.md``. A tuned schedule is
only used where tuning measured it faster than the default, so ``gain`` below 1 is timing noise
of a shared host.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch

import tvm_sparse
from tvm_sparse.measure import block_mask

from architectures import BasicBlock, InvertedResidual, randomize_batch_norm
from harness import in_fresh_process, interleave, write_results


class FFN(torch.nn.Module):
    """A BERT-style FFN: ``d -> hidden`` pruned to ``density`` of 16x1 blocks, then dense back."""

    def __init__(self, d: int, hidden: int, density: float):
        super().__init__()
        rng = np.random.default_rng(0)
        self.up = torch.nn.Linear(d, hidden)
        self.down = torch.nn.Linear(hidden, d)
        if density < 1:
            mask = block_mask(hidden, d, (16, 1), density, rng).astype("float32")
            with torch.no_grad():
                self.up.weight.mul_(torch.from_numpy(mask))

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x)))


CASES = [
    # (name, model factory, input shape)
    ("FFN 128x768->3072->768, 90% 16x1 blocks", lambda: FFN(768, 3072, 0.1), (128, 768)),
    ("FFN 32x256->1024->256, dense", lambda: FFN(256, 1024, 1.0), (32, 256)),
    # expand 1x1, depthwise 3x3 stride 2, project 1x1: where the conv defaults are weakest
    (
        "MobileNetV2 block 24->144->32, stride 2, 56x56",
        lambda: randomize_batch_norm(InvertedResidual(24, 32, stride=2, expand=6)),
        (1, 24, 56, 56),
    ),
    # ResNet-18's first and last basic blocks: two 3x3 convs each, NHWC
    ("ResNet-18 block 64->64, 56x56", lambda: randomize_batch_norm(BasicBlock(64, 64)),
     (1, 64, 56, 56)),
    ("ResNet-18 block 512->512, 7x7", lambda: randomize_batch_norm(BasicBlock(512, 512)),
     (1, 512, 7, 7)),
]  # fmt: skip


def measure(name, model, x, *, target: str, trials: int, cache: str, repeat: int) -> dict:
    with torch.no_grad():
        expected = model(x).numpy()
    untuned = tvm_sparse.compile(model, target, example_inputs=(x,), tuning_cache=None)
    result = tvm_sparse.autotune(model, target, example_inputs=(x,), trials=trials, cache=cache)
    tuned = tvm_sparse.compile(model, target, example_inputs=(x,), tuning_cache=cache)
    for compiled in (untuned, tuned):
        np.testing.assert_allclose(compiled(x.numpy()), expected, rtol=1e-4, atol=1e-4)
    ms = interleave(  # in turns: drift on a shared host hits both alike
        {
            "untuned": lambda: untuned.benchmark(x.numpy(), repeat=repeat),
            "tuned": lambda: tuned.benchmark(x.numpy(), repeat=repeat),
        },
        rounds=5,
        settle_between=False,
    )
    tuned_ops = sorted({r.kernel for r in tuned.report.rows if r.kernel.endswith("(tuned)")})
    row = {
        "case": name,
        "untuned_ms": ms["untuned"],
        "tuned_ms": ms["tuned"],
        "gain": ms["untuned"] / ms["tuned"],
        "trials": result.trials,
        "tuning_s": result.seconds,
        "workloads": len(result.workloads),
        "tuned_kernels": ", ".join(tuned_ops) or "none (defaults were fastest)",
        "per_workload": [
            {"kind": w.kind, "name": w.name, "default_ms": w.default_s * 1e3,
             "best_ms": min(w.best_s, w.default_s) * 1e3, "speedup": w.speedup}
            for w in result.workloads
        ],
    }  # fmt: skip
    gained = f"{row['untuned_ms']:.3f} -> {row['tuned_ms']:.3f} ms"
    print(f"[tuning] {name}: {gained}\n{result.table()}", flush=True)
    return row


def run(*, trials: int, repeat: int, out_dir: str, target: str, cache: str | None) -> list[dict]:
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tvm_sparse_tuning_bench_") as tmp:
        for name, factory, shape in CASES:
            model, x = factory().eval(), torch.randn(*shape)
            rows.append(in_fresh_process(measure, name, model, x, target=target, trials=trials,
                                         cache=cache or tmp, repeat=repeat))  # fmt: skip
    write_results(
        "tuning",
        rows,
        ["case", "untuned_ms", "tuned_ms", "gain", "trials", "tuning_s", "tuned_kernels"],
        out_dir=out_dir,
        notes="Median ms of one call, best of 5 interleaved rounds; gain = untuned / tuned. "
        "trials: candidates measured (default schedules included); tuning_s: wall time of "
        "tvm_sparse.autotune on this host. Where tuned_kernels is none the two builds are "
        "the same (no record beat its default), and the gain is this host's timing noise.",
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16, help="candidates per workload")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--target", default="x86")
    parser.add_argument("--cache", help="tuning cache directory (default: a temporary one)")
    args = parser.parse_args()
    run(trials=args.trials, repeat=args.repeat, out_dir=args.out, target=args.target,
        cache=args.cache)  # fmt: skip


if __name__ == "__main__":
    main()
