"""Quiet latency on tvm_sparse's parallel launcher against TVM's own thread pool.

    python benchmarks/launcher.py [--rounds 4] [--seconds 1.5] [--out benchmarks/results]

Writes ``launcher.json`` and ``launcher.md``. The models of ``benchmarks/contention.py``, the
1x4-block FFN of ``benchmarks/sparse.py`` and the BERT layer of ``benchmarks/x86.py`` are each
compiled once (what ``tvm_sparse.compile`` returns) and exported;
then fresh processes take turns, one loading the library on TVM's pool (as before the
launcher), the next with the launcher installed, each calling the VM's ``main`` back to back on
a prepared tensor on an otherwise idle machine; a third calls it as users do, through
``tvm_sparse.load`` with numpy in and out (``compiled_model_ms``, which adds the
conversions). Two pools never share a process, since an idle pool's spinning
workers would slow the other. A row's ratio is the median over rounds of the launcher's median
call over TVM's pool's median in the same round (above 1: the launcher is slower); the check
is that it stays at most 1.05.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import contention
import numpy as np
import torch

import tvm_sparse

from architectures import BertLayer
from harness import in_fresh_process, write_results

LIMIT = 1.05


CASES = {
    **contention.CASES,
    "FFN 128x768 @ 768x3072, 90% 1x4 blocks": lambda: contention._ffn(128, 0.1, (1, 4)),
    "BERT-base layer 1x128x768": lambda: (BertLayer().eval(), torch.randn(1, 128, 768)),
}


def _export(name: str, path: str) -> str:
    torch.manual_seed(0)
    model, x = CASES[name]()
    compiled = tvm_sparse.compile(model, "x86", example_inputs=(x,))
    compiled.export_library(path)
    np.save(path + ".x.npy", x.numpy())
    return path


def time_library(path: str, pool: str, seconds: float) -> float:
    """Median ms per call of the exported model's ``main``, called on a prepared tensor as
    TVM's VM runs it, on ``pool``: ``"tvm"`` (TVM's pool) or ``"launcher"``; or
    ``"compiled_model"``: through ``tvm_sparse.load`` with numpy in and out, as users call it."""
    import tvm
    from tvm import relax

    from tvm_sparse.compiled_model import use_all_cores
    from tvm_sparse.runtime.threading import ThreadConfig, load_module

    xs = np.load(path + ".x.npy")
    if pool == "compiled_model":
        compiled = tvm_sparse.load(path)
        call = lambda: compiled(xs)  # noqa: E731
    else:
        module = tvm.runtime.load_module(path)
        if pool == "tvm":
            use_all_cores(tvm_sparse.targets.get_preset("x86").tvm_target())
        else:
            module, problem = load_module(module, ThreadConfig(), path=path)
            assert problem is None, problem
        vm = relax.VirtualMachine(module, tvm.cpu())
        tx, main = tvm.runtime.tensor(xs), vm["main"]
        call = lambda: main(tx)  # noqa: E731
    for _ in range(5):
        call()
    samples, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(samples) < 10:
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples) * 1e3)


def run(rounds: int, seconds: float) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="launcher_") as tmp:
        for i, name in enumerate(CASES):
            path = in_fresh_process(_export, name, os.path.join(tmp, f"case{i}.so"))
            ms = {"tvm": [], "launcher": [], "compiled_model": []}
            for r in range(rounds):
                order = list(ms)[r % 3 :] + list(ms)[: r % 3]
                for pool in order:
                    ms[pool].append(in_fresh_process(time_library, path, pool, seconds))
            ratios = np.asarray(ms["launcher"]) / np.asarray(ms["tvm"])
            ratio = float(np.median(ratios))
            rows.append({
                "case": name,
                "tvm_pool_ms": float(np.median(ms["tvm"])),
                "launcher_ms": float(np.median(ms["launcher"])),
                "launcher_over_tvm_pool": ratio,
                "compiled_model_ms": float(np.median(ms["compiled_model"])),
                "round_ratios": " ".join(f"{v:.3f}" for v in ratios),
                "passed": "yes" if ratio <= LIMIT else "NO",
            })  # fmt: skip
            print(f"[launcher] {rows[-1]}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    rows = run(args.rounds, args.seconds)
    write_results(
        "launcher",
        rows,
        list(rows[0]),
        out_dir=args.out,
        notes="Median ms of one call, back to back on an idle machine, in fresh processes "
        "taking turns (one pool per process). launcher_over_tvm_pool: median over "
        f"{args.rounds} rounds of the launcher's time over TVM's pool's in the same round "
        f"(above 1: slower); passed: at most {LIMIT}.",
    )


if __name__ == "__main__":
    main()
