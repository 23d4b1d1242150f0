"""Timing helpers shared by calibration and the benchmarks (random pruned weights), on this
machine or on an RPC device (:class:`Runner`)."""

from __future__ import annotations

import os
import tempfile
import uuid

import numpy as np
import tvm
from tvm import relax
from tvm.target import Target

from ..runtime.threading import ThreadConfig, load_module
from ..timing import TimingPolicy, median_ms
from .bsr_matmul import BSRMatmulKnobs, bsr_matmul
from .formats import to_bsr, to_nm
from .nm_matmul import NMMatmulKnobs, nm_matmul

__all__ = [
    "Runner",
    "block_mask",
    "measure_bsr",
    "measure_dense",
    "measure_nm",
    "nm_mask",
    "time_prim_func",
]


class Runner:
    """Where a measured kernel runs: this machine (``session=None``), or the device behind a
    TVM RPC session, for which libraries are linked with ``cross_compiler``.

    On this machine calls are timed by the project's timing policy
    (:func:`tvm_sparse.timing.median_ms`) on the launcher compiled models run on. On a device
    they are timed there by TVM's ``time_evaluator`` (the round trip of an RPC call would
    swamp a kernel's time), over as many repeats as the policy's rounds, each at least a
    round's length; the median is kept.
    """

    def __init__(self, session=None, cross_compiler: str | None = None):
        self.session = session
        self.cross_compiler = cross_compiler
        self.device = session.cpu(0) if session is not None else tvm.cpu()

    def load(self, built) -> tvm.runtime.Module:
        """``built`` (a compiled library or Relax executable) loaded where it runs."""
        if self.session is None:
            return load_module(built, ThreadConfig())[0]
        from tvm.support import cc

        name = f"tvm_sparse_calibrate_{uuid.uuid4().hex[:12]}.so"
        kwargs = {}
        if self.cross_compiler:
            kwargs["fcompile"] = cc.cross_compiler(self.cross_compiler)
        with tempfile.TemporaryDirectory(prefix="tvm_sparse_rpc_") as tmp:
            path = os.path.join(tmp, name)
            built.export_library(path, **kwargs)
            self.session.upload(path)
        return self.session.load_module(name)

    def tensors(self, arrays: list[np.ndarray]) -> list:
        return [tvm.runtime.tensor(a, self.device) for a in arrays]

    def seconds(self, module, args: list, func_name: str = "main") -> float:
        """Seconds of one call of ``module[func_name](*args)``."""
        if self.session is None:
            func = module[func_name]
            return median_ms(lambda: func(*args)) / 1e3
        policy = TimingPolicy()
        func = module[func_name]
        func(*args)  # warm-up: first-touch pages, the device's thread pool
        timer = module.time_evaluator(
            func_name,
            self.device,
            number=1,
            repeat=policy.min_rounds,
            min_repeat_ms=int(policy.round_ms),
        )
        return float(np.median(timer(*args).results))


_HOST = Runner()


def block_mask(
    n: int, k: int, block: tuple[int, int], density: float, rng: np.random.Generator
) -> np.ndarray:
    """A ``(n, k)`` 0/1 mask keeping a random ``density`` of ``block``-shaped blocks."""
    r, c = block
    grid = rng.random((-(-n // r), -(-k // c))) < density
    return np.kron(grid, np.ones((r, c), dtype=bool))[:n, :k]


def nm_mask(n: int, k: int, nm: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A ``(n, k)`` mask keeping ``nm[0]`` random entries of every ``nm[1]`` consecutive ones."""
    keep, group = nm
    k_pad = -(-k // group) * group
    scores = rng.random((n, k_pad // group, group))
    ranks = scores.argsort(axis=2).argsort(axis=2)
    return (ranks < keep).reshape(n, k_pad)[:, :k]


def time_prim_func(
    func: tvm.tirx.PrimFunc, target: Target, args: list[np.ndarray], runner: Runner = _HOST
) -> float:
    """Seconds of one call of ``func`` (the output is the last arg), by the timing policy."""
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target)
    return runner.seconds(runner.load(lib), runner.tensors(args))


def measure_dense(target: Target, m: int, n: int, k: int, runner: Runner = _HOST) -> float:
    """GFLOP/s of the dense ``(m, k) @ (k, n)`` matmul as ``tvm_sparse.pipeline`` builds it."""
    seconds = time_dense_relax(target, m, n, k, runner)
    return 2.0 * m * n * k / seconds / 1e9


def time_dense_relax(target: Target, m: int, n: int, k: int, runner: Runner = _HOST) -> float:
    from ..pipeline import pipeline

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((k, n)).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((m, k), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(x, relax.const(weight)))
        bb.emit_func_output(out)
    exe = tvm.compile(bb.get(), target, relax_pipeline=pipeline(target, sparsity="off"))
    vm = relax.VirtualMachine(runner.load(exe), runner.device)
    return runner.seconds(vm, runner.tensors([rng.standard_normal((m, k)).astype("float32")]))


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
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((n, k)) * block_mask(n, k, block, density, rng)).astype("float32")
    knobs = BSRMatmulKnobs.for_target(target).resolve(block, m, n)
    bsr = to_bsr(weight, block, row_multiple=knobs.group)
    func = bsr_matmul(m, k, n, block, bsr.nnzb, bsr.block_rows, knobs=knobs)
    data = bsr.data_cr() if knobs.variant == "rows" else bsr.data
    lead = (1,) if knobs.variant == "m" else ()
    x = rng.standard_normal((*lead, m, k)).astype("float32")
    y = np.zeros((*lead, m, n), "float32")
    seconds = time_prim_func(func, target, [x, data, bsr.indices, bsr.indptr, y], runner)
    return 2.0 * m * max(bsr.data.size, 1) / seconds / 1e9


def measure_nm(
    target: Target, m: int, n: int, k: int, nm: tuple[int, int], runner: Runner = _HOST
) -> float:
    """GFLOP/s (over stored values) of the N:M kernel."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((n, k)) * nm_mask(n, k, nm, rng)).astype("float32")
    knobs = NMMatmulKnobs.for_target(target).resolve(m)
    mat = to_nm(weight, nm, row_multiple=knobs.group)
    func = nm_matmul(m, k, n, nm, mat.values.shape[0], knobs=knobs)
    x = rng.standard_normal((m, k)).astype("float32")
    seconds = time_prim_func(
        func, target, [x, mat.values, mat.columns, np.zeros((m, n), "float32")], runner
    )
    return 2.0 * m * mat.values.size / seconds / 1e9
