"""Rates of the matmul kernels a calibration table holds: the dense matmul as the pipeline builds
it, and the sparse kernels on random pruned weights, timed by the project's timing policy on
this machine or on an RPC device (:class:`~tvm_sparse.runtime.runner.Runner`)."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.target import Target

from ..kernels.bsr_matmul import BSRMatmulKnobs, bsr_matmul
from ..kernels.epilogue import PLAIN
from ..kernels.formats import to_bsr
from ..kernels.nm_permute import nm_permute_applies
from ..passes.sparse_decisions import Plan
from ..passes.sparse_kernels import CPUSparseKernels
from ..passes.sparsity_config import NM_VARIANTS
from ..pipeline import pipeline
from ..runtime.runner import Runner
from ..timing import median_ms
from .random_masks import block_mask, nm_mask

__all__ = [
    "bsr_case",
    "dense_case",
    "measure_bsr",
    "measure_dense",
    "measure_nm",
    "nm_case",
    "time_dense_relax",
    "time_prim_func",
]


_HOST = Runner()


def time_prim_func(
    func: tvm.tirx.PrimFunc, target: Target, args: list[np.ndarray], runner: Runner = _HOST
) -> float:
    """Seconds of one call of ``func`` (the output is the last arg), by the timing policy."""
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target)
    return median_ms(runner.timed(runner.load(lib), runner.tensors(args))) / 1e3


def measure_dense(target: Target, m: int, n: int, k: int, runner: Runner = _HOST) -> float:
    """GFLOP/s of the dense ``(m, k) @ (k, n)`` matmul as ``tvm_sparse.pipeline`` builds it."""
    seconds = time_dense_relax(target, m, n, k, runner)
    return 2.0 * m * n * k / seconds / 1e9


def dense_case(target: Target, m: int, n: int, k: int):
    """The dense ``(m, k) @ (k, n)`` matmul as ``pipeline`` builds it, and an input."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((k, n)).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((m, k), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(x, relax.const(weight)))
        bb.emit_func_output(out)
    exe = tvm.compile(bb.get(), target, relax_pipeline=pipeline(target, sparsity="off"))
    return exe, rng.standard_normal((m, k)).astype("float32")


def time_dense_relax(target: Target, m: int, n: int, k: int, runner: Runner = _HOST) -> float:
    """Seconds of one call of the dense ``(m, k) @ (k, n)`` matmul as ``pipeline`` builds it."""
    exe, x = dense_case(target, m, n, k)
    vm = relax.VirtualMachine(runner.load(exe), runner.device)
    return median_ms(runner.timed(vm, runner.tensors([x]))) / 1e3


def bsr_case(target: Target, m: int, n: int, k: int, block: tuple[int, int], density: float):
    """The BSR kernel for a random weight at ``density`` of ``block`` blocks, its arguments
    (the output last) and the values it stores."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((n, k)) * block_mask(n, k, block, density, rng)).astype("float32")
    knobs = BSRMatmulKnobs.for_target(target).resolve(block, m, n)
    bsr = to_bsr(weight, block, row_multiple=knobs.group)
    func = bsr_matmul(m, k, n, block, bsr.nnzb, bsr.block_rows, knobs=knobs)
    data = bsr.data_cr() if knobs.variant == "rows" else bsr.data
    lead = (1,) if knobs.variant == "m" else ()
    x = rng.standard_normal((*lead, m, k)).astype("float32")
    y = np.zeros((*lead, m, n), "float32")
    return func, [x, data, bsr.indices, bsr.indptr, y], max(bsr.data.size, 1)


def measure_bsr(
    target: Target,
    m: int,
    n: int,
    k: int,
    block: tuple[int, int],
    density: float,
    runner: Runner = _HOST,
) -> float:
    """GFLOP/s (over stored values) of the BSR kernel at ``density`` of ``block`` blocks."""
    func, args, stored = bsr_case(target, m, n, k, block, density)
    seconds = time_prim_func(func, target, args, runner)
    return 2.0 * m * stored / seconds / 1e9


def nm_case(
    target: Target, m: int, n: int, k: int, nm: tuple[int, int], variant: str | None = None
):
    """The N:M kernel (the target's default, or ``variant``) for a random N:M weight, its
    arguments (the output last) and the values it stores."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((n, k)) * nm_mask(n, k, nm, rng)).astype("float32")
    plan = Plan("nm", "nm", "", nm=nm, variant=variant)
    kernel = CPUSparseKernels(target).matmul(weight, m, plan, PLAIN)
    x = rng.standard_normal((m, k)).astype("float32")
    args = [x, *kernel.weights, np.zeros((m, n), "float32")]
    return kernel.func, args, kernel.flops // (2 * m)


def measure_nm(
    target: Target, m: int, n: int, k: int, nm: tuple[int, int], runner: Runner = _HOST
) -> float:
    """GFLOP/s (over stored values) of the faster of the target's N:M kernels: the table rates
    N:M as one kernel, and a measured layer times each (``nm_variants`` of
    :func:`~tvm_sparse.passes.sparse_decisions.measured`)."""
    variants = NM_VARIANTS if nm_permute_applies(target, nm, k) else (None,)
    rates = []
    for variant in variants:
        func, args, stored = nm_case(target, m, n, k, nm, variant)
        rates.append(2.0 * m * stored / time_prim_func(func, target, args, runner) / 1e9)
    return max(rates)
