"""The hardware's own limits, measured on this machine: peak fp32 FLOP/s and memory bandwidth.

Both are TVM kernels built for the same target as the benchmarks, so the numbers are what
tvm_sparse's code could reach, not a datasheet figure::

    python benchmarks/roofline.py [--target x86]

* peak FLOP/s: every thread runs independent chains of fused multiply-adds on SIMD registers
  (enough chains to cover the FMA latency), no memory traffic;
* bandwidth: a parallel, vectorised ``y = x + 1`` over buffers far larger than the caches,
  counted as bytes read plus bytes written.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time

import numpy as np
import tvm
from tvm.script import tirx as T

from tvm_sparse.schedules.cpu.base import num_cores, vector_lanes
from tvm_sparse.targets import get_preset

__all__ = ["measure_bandwidth", "measure_peak_flops", "roofline"]

_CHAINS = 12  # independent accumulators per thread: > FMA latency x FMA ports on x86 cores
_ITERS = 200_000
_TRIALS = 3


def _fma_kernel(threads: int, lanes: int, iters: int):
    width = _CHAINS * lanes

    @T.prim_func(s_tir=False)
    def fma(out: T.Buffer((threads, width), "float32"), scale: T.Buffer((1,), "float32")):
        for t in T.parallel(threads):
            # every access one register at a constant offset, so that LLVM keeps the
            # accumulators in registers instead of storing them on each iteration
            acc = T.decl_buffer((width,), "float32", scope="local")
            for c in T.unroll(_CHAINS):
                for i in T.vectorized(lanes):
                    acc[c * lanes + i] = scale[0] + T.Cast("float32", t + c)
            for _ in range(iters):
                for c in T.unroll(_CHAINS):
                    for i in T.vectorized(lanes):
                        acc[c * lanes + i] = T.fma(
                            acc[c * lanes + i], T.float32(0.9999999), T.float32(1e-7)
                        )
            for c in T.unroll(_CHAINS):
                for i in T.vectorized(lanes):
                    out[t, c * lanes + i] = acc[c * lanes + i]

    return fma, 2 * threads * width * iters


def _copy_kernel(n: int, lanes: int):
    @T.prim_func(s_tir=False)
    def copy(x: T.Buffer((n,), "float32"), y: T.Buffer((n,), "float32")):
        for o in T.parallel(n // (lanes * 64)):
            for i in T.serial(64):
                for v in T.vectorized(lanes):
                    y[(o * 64 + i) * lanes + v] = x[(o * 64 + i) * lanes + v] + T.float32(1)

    return copy, 8 * n


def _best_seconds(lib, name: str, *args, repeat: int) -> float:
    mod = lib.jit() if hasattr(lib, "jit") else lib
    timer = mod.time_evaluator(name, tvm.cpu(), number=3, repeat=repeat)
    return float(min(timer(*args).results))


@functools.cache
def _fma_lib(target_json: str) -> tuple[object, int, int, int]:
    """The FMA-chain kernel built for a target (once: the roofline times it in several trials),
    with its FLOPs, threads and lanes."""
    target = tvm.target.Target(json.loads(target_json))
    threads, lanes = num_cores(target), vector_lanes(target)
    func, flops = _fma_kernel(threads, lanes, _ITERS)
    lib = tvm.compile(tvm.IRModule({"fma": func.with_attr("global_symbol", "fma")}), target=target)
    return lib, flops, threads, lanes


def measure_peak_flops(target: tvm.target.Target, *, repeat: int = 10) -> float:
    """Peak fp32 FLOP/s of all the target's cores, from register-resident FMA chains."""
    lib, flops, threads, lanes = _fma_lib(str(target))
    out = tvm.runtime.tensor(np.zeros((threads, _CHAINS * lanes), "float32"))
    scale = tvm.runtime.tensor(np.array([0.9999999], "float32"))
    return flops / _best_seconds(lib, "fma", out, scale, repeat=repeat)


def measure_bandwidth(target: tvm.target.Target, *, mbytes: int = 256, repeat: int = 10) -> float:
    """Main-memory bandwidth in bytes/s (read + write) of a parallel streaming kernel."""
    lanes = vector_lanes(target)
    n = (mbytes << 20) // 4 // (lanes * 64) * (lanes * 64)
    func, nbytes = _copy_kernel(n, lanes)
    lib = tvm.compile(
        tvm.IRModule({"copy": func.with_attr("global_symbol", "copy")}), target=target
    )
    x = tvm.runtime.tensor(np.ones(n, "float32"))
    y = tvm.runtime.tensor(np.zeros(n, "float32"))
    return nbytes / _best_seconds(lib, "copy", x, y, repeat=repeat)


def measure_sgemm_flops(*, size: int = 768, repeat: int = 20) -> float:
    """FLOP/s of PyTorch's fp32 GEMM on cache-resident square matrices: a vendor-tuned bound."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def roofline(target: str = "x86") -> dict:
    """Peak fp32 FLOP/s and memory bandwidth of this machine for ``target`` (a preset name).

    ``peak_gflops`` is the higher of the FMA-chain kernel and PyTorch's GEMM (each the best of
    a few trials), so that a kernel that misses the FMA units' rate (the TVM FMA chains keep
    their accumulators in memory on some LLVM versions) does not understate the limit.
    """
    tvm_target = get_preset(target).tvm_target()
    # a limit is the best the machine shows: a shared host can lend the cores out for a
    # fraction of a second, so the probes run in several trials, apart, and keep the best
    fma = sgemm = 0.0
    for _ in range(_TRIALS):
        fma = max(fma, measure_peak_flops(tvm_target))
        sgemm = max(sgemm, measure_sgemm_flops())
    peak = max(fma, sgemm)
    bandwidth = measure_bandwidth(tvm_target)
    return {
        "target": str(tvm_target),
        "cores": num_cores(tvm_target),
        "fma_kernel_gflops": fma / 1e9,
        "sgemm_gflops": sgemm / 1e9,
        "peak_gflops": peak / 1e9,
        "bandwidth_gbs": bandwidth / 1e9,
        "ridge_flop_per_byte": peak / bandwidth,
    }


def main() -> None:
    # TVM's pool defaults to half the logical CPUs on x86; measure with all of them
    os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="x86")
    args = parser.parse_args()
    print(json.dumps(roofline(args.target), indent=2))


if __name__ == "__main__":
    main()
