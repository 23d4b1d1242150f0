"""Measurer: MetaSchedule's builder and runner, on this machine or the boards of an RPC tracker.

Sparse and dense workloads are built and timed by the same builder and runner, default schedule
and candidates alike, so their times compare. A sparse kernel runs on its layer's real data and
index arrays (random indices are meaningless and read out of bounds).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections.abc import Iterator

import numpy as np
import tvm
from tvm.target import Target

from ..targets import TargetPreset, available_cores
from ..targets.backend import CPU, backend_of
from .rpc_tracker import RPCTracker

__all__ = ["Measurer"]


class Measurer:
    """MetaSchedule's builder and runner, shared by the sparse and the dense workloads.

    Parameters
    ----------
    preset : TargetPreset
        Its cross compiler links the libraries sent to RPC boards.
    target : tvm.target.Target
        The target ``tvm_sparse.compile`` gets (:attr:`schedule_target`: default schedules are
        made as compile makes them); :attr:`target`, the one MetaSchedule builds for, adds the
        core count.
    rpc : RPCTracker, optional
        Measure on its boards instead of this machine.
    workdir : str
        A scratch directory (the arrays of sparse kernels, MetaSchedule's logs).
    max_workers, build_timeout_s, run_timeout_s :
        As in :func:`~tvm_sparse.tune.autotune`.
    """

    def __init__(
        self,
        preset: TargetPreset,
        target: Target,
        rpc: RPCTracker | None,
        workdir: str,
        *,
        max_workers: int,
        build_timeout_s: float,
        run_timeout_s: float,
    ):
        from tvm.s_tir import meta_schedule as ms

        self.target = _with_num_cores(target)
        self.schedule_target = target
        self.workdir = workdir
        self.arguments = _Arguments()
        self.parallel = rpc.devices if rpc is not None else 1
        export = None
        if preset.cross_compiler and rpc is not None:
            export = _export_with(preset.cross_compiler)
        self.builder = ms.builder.LocalBuilder(
            max_workers=max_workers, timeout_sec=build_timeout_s, f_build=_build, f_export=export
        )
        evaluator = ms.runner.EvaluatorConfig(
            number=5, repeat=3, min_repeat_ms=20, enable_cpu_cache_flush=False
        )
        if rpc is None:
            self.runner = ms.runner.LocalRunner(
                timeout_sec=run_timeout_s,
                evaluator_config=evaluator,
                f_alloc_argument=self.arguments,
            )
        else:
            config = ms.runner.RPCConfig(
                tracker_host=rpc.host,
                tracker_port=rpc.port,
                tracker_key=rpc.key,
                session_timeout_sec=int(rpc.session_timeout_s),
            )
            self.runner = ms.runner.RPCRunner(
                config,
                evaluator_config=evaluator,
                max_workers=rpc.devices,
                f_alloc_argument=self.arguments,
            )

    @contextlib.contextmanager
    def arrays(self, arrays: list[np.ndarray | None], name: str) -> Iterator[None]:
        """Inside, kernels run on ``arrays``, one per parameter (``None``: random activations,
        a zero output); outside, on MetaSchedule's random arguments. ``name`` names the files."""
        paths: list[str | None] = []
        for i, arr in enumerate(arrays):
            if arr is None:
                paths.append(None)
                continue
            path = os.path.join(self.workdir, f"{name}_{i}.npy")
            np.save(path, arr)
            paths.append(path)
        self.arguments.paths = paths
        try:
            yield
        finally:
            self.arguments.paths = None

    def measure(self, funcs: list[tvm.tirx.PrimFunc]) -> Iterator[tuple[int, float]]:
        """Seconds per call of each function (``inf`` when it fails to build or run).

        Builds all of them in one go (each ``build`` starts fresh worker processes), then runs
        them ``self.parallel`` at a time (one per board of an RPC key; the local runner measures
        one at a time anyway), yielding ``(index, seconds)`` as each finishes.
        """
        from tvm.s_tir import meta_schedule as ms

        mods = [tvm.IRModule({"main": f.with_attr("global_symbol", "main")}) for f in funcs]
        built = self.builder.build([ms.builder.BuilderInput(m, self.target) for m in mods])
        try:
            ready = []
            for i, (mod, res) in enumerate(zip(mods, built, strict=True)):
                if res.error_msg is not None:
                    yield i, math.inf
                    continue
                # As MetaSchedule does: a weight a schedule packs is passed packed.
                args_info = ms.arg_info.ArgInfo.from_entry_func(mod, remove_preproc=True)
                ready.append((i, ms.runner.RunnerInput(res.artifact_path, "cpu", args_info)))
            for start in range(0, len(ready), self.parallel):
                chunk = ready[start : start + self.parallel]
                futures = self.runner.run([inp for _, inp in chunk])
                for (i, _), future in zip(chunk, futures, strict=True):
                    run = future.result()
                    secs = [float(s) for s in run.run_secs or []]
                    ok = run.error_msg is None and secs and max(secs) < 1e9
                    yield i, min(secs) if ok else math.inf
        finally:
            for res in built:
                if res.artifact_path:
                    shutil.rmtree(os.path.dirname(res.artifact_path), ignore_errors=True)

    def interleaved(
        self, first: tvm.tirx.PrimFunc, second: tvm.tirx.PrimFunc, rounds: int = 2
    ) -> list[tuple[float, float]]:
        """``first`` and ``second`` measured in turn: ``rounds`` pairs of seconds."""
        times = dict(self.measure([first, second] * rounds))
        return [(times[2 * i], times[2 * i + 1]) for i in range(rounds)]


def _with_num_cores(target: Target) -> Target:
    # MetaSchedule's parallel/vectorize postprocessor needs the core count of an llvm target.
    if backend_of(target, allow_none=True) is not CPU or target.attrs.get("num-cores"):
        return target
    config = json.loads(str(target))
    config["num-cores"] = available_cores()
    return Target(config)


class _Arguments:
    """``f_alloc_argument`` of the runners: the layer's real arrays where it has them.

    Picklable (it runs in the runner's worker processes): it holds paths of ``.npy`` files, one
    per kernel parameter, ``None`` for activations (random) and outputs (zeros); with no paths
    at all it falls back to MetaSchedule's random arguments (dense workloads).
    """

    def __init__(self) -> None:
        self.paths: list[str | None] | None = None

    def __call__(self, *args):
        device, args_info, alloc_repeat = args[-3:]
        if self.paths is None:
            if len(args) == 4:
                from tvm.s_tir.meta_schedule.runner.rpc_runner import default_alloc_argument

                return default_alloc_argument(*args)
            from tvm.s_tir.meta_schedule.runner.local_runner import default_alloc_argument

            return default_alloc_argument(*args)
        rng = np.random.default_rng(0)
        host = []
        last = len(args_info) - 1
        for i, (path, info) in enumerate(zip(self.paths, args_info, strict=True)):
            _, dtype, shape = info
            if path is not None:
                host.append(np.load(path))
            elif i == last:
                host.append(np.zeros(shape, dtype))
            else:
                host.append(rng.standard_normal(shape).astype(dtype))
        return [[tvm.runtime.tensor(a, device) for a in host] for _ in range(alloc_repeat)]


def _export_with(cross_compiler: str):
    def export(mod) -> str:
        # Runs in the builder's worker process: imports here.
        import os
        import tempfile

        from tvm.support import cc

        path = os.path.join(tempfile.mkdtemp(), "tvm_tmp_mod.so")
        mod.export_library(path, fcompile=cc.cross_compiler(cross_compiler))
        return path

    return export


def _build(mod: tvm.IRModule, target: Target, _params) -> tvm.runtime.Module:
    """MetaSchedule's ``default_build`` without its eager import of all tensor intrinsics.

    That import is slow, and the builder pays it in every worker process it starts, for every
    batch; fp32 CPU schedules need no intrinsics, others import them on demand.
    """
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    try:
        return build(mod, target=target)
    except Exception:  # noqa: BLE001 - retried once with the intrinsics registered
        import tvm.s_tir.tensor_intrin  # noqa: F401

        return build(mod, target=target)
