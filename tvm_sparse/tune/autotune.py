"""``tvm_sparse.autotune``: tune a model's kernels once per device, keep the records in a cache.

The model goes through the same passes as :func:`tvm_sparse.compile` up to scheduling; the
PrimFuncs found there are the workloads (:mod:`.workloads`). Project sparse kernels are measured
over their knob candidates (:func:`.tune_sparse.tune_sparse`), dense PrimFuncs with a reduction
by MetaSchedule's search (:func:`.tune_dense.tune_dense`). The default schedule is measured first
and the fastest candidate again, interleaved with it (:mod:`.confirm_winner`), so compile uses a
tuned schedule only where it is faster. Every measured candidate is appended to the cache before
the next one starts: a stopped tuner, run again, resumes where it was. Measurements run on this
machine or on the boards of a TVM RPC tracker (:class:`.rpc_tracker.RPCTracker`).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

from tvm.target import Target

from .._progress import progress_fn
from ..targets import TargetPreset, resolve_target
from .cache import resolve_cache
from .measurer import Measurer
from .rpc_tracker import RPCTracker
from .tune_dense import tune_dense
from .tune_result import TuneResult
from .tune_sparse import tune_sparse
from .workloads import dense_workloads, schedule_input, sparse_workloads

__all__ = ["autotune"]

_KINDS = ("dense", "sparse")


def autotune(
    model: Any,
    target: str | dict | Target | TargetPreset = "x86",
    *,
    trials: int = 32,
    example_inputs: Any = None,
    dynamic_shapes: Any = None,
    dynamic_batch: bool = False,
    sparsity: str | dict = "auto",
    cache: Any = True,
    rpc: RPCTracker | str | None = None,
    kinds: tuple[str, ...] = _KINDS,
    max_workers: int = 1,
    build_timeout_s: float = 600.0,
    run_timeout_s: float = 120.0,
    progress: bool | Callable[[str], None] = True,
    seed: int = 0,
) -> TuneResult:
    """Tune the dense ops and sparse kernels of ``model`` for ``target``; records go to a cache.

    Parameters
    ----------
    model : like :func:`tvm_sparse.compile`
        A ``torch.nn.Module`` (with ``example_inputs``), exported program, ONNX model or path,
        or a Relax ``IRModule``.
    target : str | dict | tvm.target.Target | TargetPreset
        A preset name or a TVM target: the one that ``tvm_sparse.compile`` will be given.
    trials : int
        Candidates to measure per workload (the default schedule included); a resumed run
        counts the records already in the cache.
    dynamic_shapes, dynamic_batch :
        As in :func:`tvm_sparse.compile` (kernels with symbolic shapes are not tuned).
    sparsity : "auto" | "off" | dict
        As in :func:`tvm_sparse.compile`; it decides which sparse kernels exist.
    cache : bool | str | os.PathLike | TuningCache
        Where records go; ``True``: the default directory ``~/.cache/tvm_sparse/tuning``.
    rpc : RPCTracker | str, optional
        Measure on boards of a TVM RPC tracker instead of this machine (``"host:port:key"``).
    kinds : tuple of "dense", "sparse"
        Which workloads to tune.
    max_workers : int
        Parallel builds (each builder process imports TVM's tensor intrinsics once: slow).
    build_timeout_s, run_timeout_s : float
        Limits per build and per measurement; a candidate past them scores infinity.
    progress : bool | callable
        Print progress to stderr, or call this function with each message.
    seed : int
        Seed of the evolutionary search.

    Returns
    -------
    TuneResult
        Default and best latency per workload, trials measured, tuning time.
    """
    unknown = set(kinds) - set(_KINDS)
    if unknown:
        raise ValueError(f"kinds={kinds!r}: valid kinds are {_KINDS}")
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    if isinstance(rpc, str):
        rpc = RPCTracker.parse(rpc)
    preset = resolve_target(target)
    tvm_target = preset.tvm_target()
    store = resolve_cache(cache, tvm_target)
    if store is None:
        raise ValueError("autotune needs a cache to write to: cache=True, a path or a TuningCache")
    store.check()
    say = progress_fn(progress, "tune")
    start = time.perf_counter()
    result = TuneResult(target=str(tvm_target), cache_path=str(store.path))

    mod = schedule_input(model, preset, example_inputs, dynamic_shapes, dynamic_batch, sparsity)
    sites = sparse_workloads(mod) if "sparse" in kinds else []
    dense = dense_workloads(mod) if "dense" in kinds else []
    say(f"{len(sites)} sparse and {len(dense)} dense workloads; cache {store.path}")
    if not sites and not dense:
        return result

    workdir = tempfile.mkdtemp(prefix="tvm_sparse_tune_")
    try:
        measurer = Measurer(
            preset,
            tvm_target,
            rpc,
            workdir,
            max_workers=max_workers,
            build_timeout_s=build_timeout_s,
            run_timeout_s=run_timeout_s,
        )
        for i, site in enumerate(sites, 1):
            tag = f"[{i}/{len(sites)}]"
            result.workloads.append(
                tune_sparse(site, store, measurer, trials=trials, say=say, tag=tag)
            )
        for i, (name, func) in enumerate(dense, 1):
            tag = f"[{i}/{len(dense)}]"
            result.workloads.append(
                tune_dense(name, func, store, measurer, trials=trials, seed=seed, say=say, tag=tag)
            )
    except KeyboardInterrupt:
        say(f"interrupted: {len(store)} records kept in {store.path}; run again to resume")
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result.seconds = time.perf_counter() - start
    say(f"done in {result.seconds:.0f} s, {result.trials} candidates measured")
    return result
