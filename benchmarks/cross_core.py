"""Why one build times 2-3x apart between processes: the cost of handing data between cores.

    python benchmarks/cross_core.py [--rounds 12] [--out benchmarks/results]

Writes ``cross_core.json`` and ``cross_core.md``. Each round measures, in this order:

- the round trip of one cache line between two threads pinned to the first two CPUs this
  process may use (a C ping-pong built with the system compiler, as the launcher is);
- in a fresh process, one unstructured 90% sparse kernel (ViT-tiny's 197 tokens through a
  192x192 weight, the ``"m"`` BSR variant), timed back to back on the launcher: with its
  ``(M, K)`` input, which the kernel transposes into a buffer that both threads write and then
  both read (``mk_2_threads_ms``); the same with the launcher's task count fixed instead of
  learned per loop (``task_us=0``, ``mk_2_threads_fixed_tasks_ms``); on one thread
  (``mk_1_thread_ms``); and with the input already transposed, ``(K, M)``, which needs no
  transposing launch (``km_2_threads_ms``);
- the round trip again.

A virtual machine's two CPUs can sit on one core complex or on two, and the hypervisor moves
them; the round trip shows which (tens of nanoseconds within a complex, hundreds across), and
whether it changed during the round. The summary row gives each column's largest value over
its smallest: the spread between fresh processes of one and the same kernel. Read a round's
kernel times beside its round trips: a kernel whose threads hand each other freshly written
data follows the round trip, one thread alone does not.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile

import numpy as np

from harness import in_fresh_process, write_results

_PING_PONG = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#define TRIPS 1000000
static _Atomic int flag __attribute__((aligned(64)));
static int cpu[2];
static void pin(int c) {
  cpu_set_t s; CPU_ZERO(&s); CPU_SET(c, &s);
  pthread_setaffinity_np(pthread_self(), sizeof s, &s);
}
static void* echo(void* unused) {
  pin(cpu[1]);
  for (int i = 0; i < TRIPS; ++i) {
    while (atomic_load(&flag) != 2 * i + 1) {}
    atomic_store(&flag, 2 * i + 2);
  }
  return unused;
}
int main(int argc, char** argv) {
  cpu[0] = atoi(argv[1]); cpu[1] = atoi(argv[2]);
  pthread_t t; pin(cpu[0]); pthread_create(&t, NULL, echo, NULL);
  struct timespec a, b; clock_gettime(CLOCK_MONOTONIC, &a);
  for (int i = 0; i < TRIPS; ++i) {
    atomic_store(&flag, 2 * i + 1);
    while (atomic_load(&flag) != 2 * i + 2) {}
  }
  clock_gettime(CLOCK_MONOTONIC, &b); pthread_join(t, NULL);
  printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / TRIPS);
  return 0;
}
"""

M, N, K, DENSITY = 197, 192, 192, 0.1


def build_ping_pong(out_dir: str) -> str:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("cross_core.py needs a C compiler (cc or gcc) on PATH")
    source, binary = os.path.join(out_dir, "ping_pong.c"), os.path.join(out_dir, "ping_pong")
    with open(source, "w") as f:
        f.write(_PING_PONG)
    subprocess.run([compiler, "-O2", "-o", binary, source, "-lpthread"], check=True)
    return binary


def round_trip_ns(binary: str) -> float:
    cpus = sorted(os.sched_getaffinity(0))[:2]
    out = subprocess.run([binary, *map(str, cpus)], check=True, capture_output=True, text=True)
    return float(out.stdout)


def time_kernels() -> dict[str, float]:
    """The three timings of a round, in this (fresh) process."""
    import tvm

    from tvm_sparse.kernels.bsr_matmul import BSRMatmulKnobs, bsr_matmul
    from tvm_sparse.kernels.formats import to_bsr
    from tvm_sparse.measure.random_masks import block_mask
    from tvm_sparse.runtime.runner import Runner
    from tvm_sparse.runtime.threading import ThreadConfig, configure
    from tvm_sparse.targets import resolve_target
    from tvm_sparse.timing import median_ms

    target = resolve_target("x86").tvm_target()
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((N, K)) * block_mask(N, K, (1, 1), DENSITY, rng)
    x = rng.standard_normal((1, M, K)).astype("float32")
    times = {}
    for layout, config, name in (
        ("MK", ThreadConfig(), "mk_2_threads_ms"),
        ("MK", ThreadConfig(task_us=0), "mk_2_threads_fixed_tasks_ms"),
        ("MK", ThreadConfig(num_threads=1), "mk_1_thread_ms"),
        ("KM", ThreadConfig(), "km_2_threads_ms"),
    ):
        knobs = BSRMatmulKnobs.for_target(target).resolve((1, 1), M, N, x_layout=layout)
        bsr = to_bsr(weight.astype("float32"), (1, 1), row_multiple=knobs.group)
        func = bsr_matmul(M, K, N, (1, 1), bsr.nnzb, bsr.block_rows, knobs=knobs, x_layout=layout)
        arg = x if layout == "MK" else np.ascontiguousarray(x.transpose(0, 2, 1))
        y = np.zeros((1, M, N), "float32")
        runner = Runner()
        entry = func.with_attr("global_symbol", "main")
        module = runner.load(tvm.compile(tvm.IRModule({"main": entry}), target))
        configure(config)  # loading installs the default
        tensors = runner.tensors([arg, bsr.data, bsr.indices, bsr.indptr, y])
        times[name] = median_ms(runner.timed(module, tensors))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("cross_core.py needs two CPUs")
    columns = ["round", "round_trip_before_ns", "round_trip_after_ns", "mk_2_threads_ms",
               "mk_2_threads_fixed_tasks_ms", "mk_1_thread_ms", "km_2_threads_ms"]  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="tvm_sparse_cross_core_") as tmp:
        binary = build_ping_pong(tmp)
        for i in range(args.rounds):
            row = {"round": str(i + 1), "round_trip_before_ns": round_trip_ns(binary)}
            row.update(in_fresh_process(time_kernels))
            row["round_trip_after_ns"] = round_trip_ns(binary)
            print(row, flush=True)
            rows.append(row)
    spread = {"round": "largest / smallest"}
    for col in columns[1:]:
        values = [r[col] for r in rows]
        spread[col] = max(values) / min(values)
    notes = (
        f"Kernel: {M}x{K} activations through a {N}x{K} weight at {DENSITY:.0%} density (1x1 "
        "blocks), timed by tvm_sparse.measure.kernel_timing on the launcher, each round in a "
        "fresh process. round_trip_*: one cache line's round trip between two threads pinned "
        "to the first two CPUs, before and after the round's process."
    )
    write_results("cross_core", rows + [spread], columns, out_dir=args.out, notes=notes)


if __name__ == "__main__":
    main()
