"""``tvm_sparse.autotune``: tune a model's kernels once per device, keep the records in a cache.

The model goes through the same passes as :func:`tvm_sparse.compile` up to scheduling; the
PrimFuncs found there are the workloads:

* project sparse kernels: every knob set of :func:`~tvm_sparse.tune.space.sparse_candidates`
  is generated, built by MetaSchedule's builder and timed by its runner with the layer's real
  data / index arrays as arguments (random indices are meaningless and read out of bounds);
* dense PrimFuncs with a reduction: MetaSchedule's evolutionary search with its XGBoost cost
  model, its records written through to the cache. The design space is the knob space of the
  rule that schedules the PrimFunc by default (:func:`~tvm_sparse.tune.space.rule_space`:
  ``Matmul``, ``Conv2dNHWC``, ``Conv2d``, ``GEMV``), so a tuned schedule is that rule's schedule
  with other knobs; a PrimFunc no knob-sampling rule claims is searched in MetaSchedule's own space
  (``PostOrderApply`` with the default llvm rules).

For both, the default schedule is measured first with the same builder and runner, and the
fastest candidate is measured again, interleaved with the default, so that ``tvm_sparse.compile``
uses a tuned schedule only where it is faster (by :data:`~.cache.MIN_GAIN`, against noise).
Every measured candidate is appended to the cache before the next one starts: a tuner stopped
by Ctrl-C or killed resumes, when run again, where it was, without measuring a finished
candidate twice.

Measurements run on this machine, or on boards registered with a TVM RPC tracker under one key
(``rpc=RPCTracker(host, port, key, devices=N)``: N sessions measure at once, and the tracker
hands them to whichever boards are free).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm
import tvm_ffi
from tvm.target import Target

from .._progress import progress_fn
from ..report import CompileReport
from ..schedules import ApplySchedules, schedule_rules
from ..targets import TargetPreset, available_cores, resolve_target
from .cache import (
    MIN_GAIN,
    Record,
    TuningCache,
    encode_tvm_json,
    resolve_cache,
)
from .space import (
    METASCHEDULE_SPACE,
    SparseSite,
    dense_workload_key,
    is_dense_tunable,
    rule_space,
    sparse_candidates,
    sparse_sites,
    tunable_rule,
)

__all__ = ["RPCTracker", "TuneResult", "WorkloadResult", "autotune"]

_KINDS = ("dense", "sparse")


@dataclass(frozen=True)
class RPCTracker:
    """Boards registered with a TVM RPC tracker (``python -m tvm.exec.rpc_tracker``).

    Parameters
    ----------
    host, port : where the tracker listens.
    key : the key the boards registered with (``rpc_server --tracker ... --key KEY``).
    devices : int
        Sessions measuring at once; set it to the number of boards under ``key``.
    session_timeout_s : float
        Limit for one measurement session (emulated boards are slow).
    """

    host: str
    port: int
    key: str
    devices: int = 1
    session_timeout_s: float = 120.0

    @classmethod
    def parse(cls, value: str) -> RPCTracker:
        """``HOST:PORT:KEY`` or ``HOST:PORT:KEY:DEVICES`` (the CLI's ``--rpc``)."""
        parts = value.split(":")
        if len(parts) not in (3, 4) or not parts[1].isdigit():
            raise ValueError(f"rpc={value!r}: expected HOST:PORT:KEY[:DEVICES]")
        devices = int(parts[3]) if len(parts) == 4 else 1
        return cls(parts[0], int(parts[1]), parts[2], devices=devices)


@dataclass
class WorkloadResult:
    """Tuning outcome of one workload."""

    kind: str
    name: str
    key: str
    default_s: float
    best_s: float
    measured: int  # candidates measured in this run
    total: int  # candidates in the cache
    #: Dense: the rule whose knobs were searched, or ``"post-order-apply"`` (MetaSchedule's own
    #: design space); sparse: ``""`` (the kernel's knob candidates).
    space: str = ""

    @property
    def tuned(self) -> bool:
        """Whether compile will use a tuned schedule (it beat a measured default)."""
        return math.isfinite(self.default_s) and self.best_s < MIN_GAIN * self.default_s

    @property
    def speedup(self) -> float:
        if not self.tuned or not math.isfinite(self.default_s) or self.best_s <= 0:
            return 1.0
        return self.default_s / self.best_s


@dataclass
class TuneResult:
    """What :func:`autotune` did: per workload, default and best latency; trials; time."""

    target: str
    cache_path: str
    seconds: float = 0.0
    workloads: list[WorkloadResult] = field(default_factory=list)

    @property
    def trials(self) -> int:
        """Candidates measured in this run (defaults included)."""
        return sum(w.measured for w in self.workloads)

    def table(self) -> str:
        lines = [
            "| kind | workload | default ms | tuned ms | speedup | measured | in cache |",
            "|---|---|---|---|---|---|---|",
        ]
        for w in self.workloads:
            best = w.best_s if w.tuned else w.default_s
            lines.append(
                f"| {w.kind} | {w.name} | {w.default_s * 1e3:.4f} | {best * 1e3:.4f} | "
                f"{w.speedup:.2f}x | {w.measured} | {w.total} |"
            )
        lines.append(
            f"\n{self.trials} candidates measured in {self.seconds:.0f} s; records in "
            f"{self.cache_path}"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


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

    mod = _schedule_input(model, preset, example_inputs, dynamic_shapes, dynamic_batch, sparsity)
    sites = _unique_sites(sparse_sites(mod)) if "sparse" in kinds else []
    dense = _dense_workloads(mod) if "dense" in kinds else []
    say(f"{len(sites)} sparse and {len(dense)} dense workloads; cache {store.path}")
    if not sites and not dense:
        return result

    ms_target = _with_num_cores(tvm_target)
    workdir = tempfile.mkdtemp(prefix="tvm_sparse_tune_")
    try:
        measurer = _Measurer(preset, ms_target, rpc, max_workers, build_timeout_s, run_timeout_s)
        measurer.workdir = workdir
        measurer.schedule_target = tvm_target  # the default schedules as compile makes them
        for i, site in enumerate(sites, 1):
            result.workloads.append(
                _tune_sparse(site, store, measurer, trials, say, f"[{i}/{len(sites)}]")
            )
        for i, (name, func) in enumerate(dense, 1):
            result.workloads.append(
                _tune_dense(name, func, store, measurer, trials, seed, say, f"[{i}/{len(dense)}]")
            )
    except KeyboardInterrupt:
        say(f"interrupted: {len(store)} records kept in {store.path}; run again to resume")
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result.seconds = time.perf_counter() - start
    say(f"done in {result.seconds:.0f} s, {result.trials} candidates measured")
    return result


# -- workloads ------------------------------------------------------------------------------


def _schedule_input(
    model, preset, example_inputs, dynamic_shapes, dynamic_batch, sparsity
) -> tvm.IRModule:
    """The module as ``ApplySchedules`` receives it in ``tvm_sparse.compile``."""
    from ..frontend import import_model
    from ..passes.collect_report import CollectFusionGroups
    from ..pipeline import schedule_input_passes

    mod = import_model(
        model, example_inputs, dynamic_shapes=dynamic_shapes, dynamic_batch=dynamic_batch
    ).mod
    report = CompileReport()
    target = preset.tvm_target()
    passes = schedule_input_passes(target, sparsity, report, CollectFusionGroups(report))
    with target:
        return tvm.transform.Sequential(passes)(mod)


def _unique_sites(sites: list[SparseSite]) -> list[SparseSite]:
    seen, out = set(), []
    for site in sites:
        if site.key not in seen:
            seen.add(site.key)
            out.append(site)
    return out


def _dense_workloads(mod: tvm.IRModule) -> list[tuple[str, tvm.tirx.PrimFunc]]:
    seen, out = set(), []
    for gvar, func in mod.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc) and is_dense_tunable(func):
            key = dense_workload_key(func)
            if key not in seen:
                seen.add(key)
                out.append((gvar.name_hint, func))
    return out


def _with_num_cores(target: Target) -> Target:
    # MetaSchedule's parallel/vectorize postprocessor needs the core count of an llvm target.
    if target.kind.name != "llvm" or target.attrs.get("num-cores"):
        return target
    config = json.loads(str(target))
    config["num-cores"] = available_cores()
    return Target(config)


# -- measuring ------------------------------------------------------------------------------


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


class _Measurer:
    """MetaSchedule's builder and runner, shared by the sparse and the dense workloads."""

    def __init__(self, preset, target, rpc, max_workers, build_timeout_s, run_timeout_s):
        from tvm.s_tir import meta_schedule as ms

        self.ms = ms
        self.target = target
        self.workdir = ""
        self.schedule_target = target
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

    def measure(self, funcs: list[tvm.tirx.PrimFunc]) -> Iterator[tuple[int, float]]:
        """Seconds per call of each function (``inf`` when it fails to build or run).

        Builds all of them in one go (each ``build`` starts fresh worker processes), then runs
        them ``self.parallel`` at a time (one per board of an RPC key; the local runner measures
        one at a time anyway), yielding ``(index, seconds)`` as each finishes.
        """
        ms = self.ms
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


def _build(mod: tvm.IRModule, target: Target, _params) -> tvm.runtime.Module:
    """MetaSchedule's ``default_build`` without its eager import of all tensor intrinsics.

    That import takes 20-30 s per builder process, and the builder starts new processes for
    every batch; fp32 CPU schedules need no intrinsics, others import them on demand.
    """
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    try:
        return build(mod, target=target)
    except Exception:  # noqa: BLE001 - retried once with the intrinsics registered
        import tvm.s_tir.tensor_intrin  # noqa: F401

        return build(mod, target=target)


# -- sparse kernels -------------------------------------------------------------------------


def _tune_sparse(site, store: TuningCache, measurer, trials, say, tag) -> WorkloadResult:
    key = site.key
    done = {json.dumps(r.knobs, sort_keys=True) for r in store.for_workload(key) if r.knobs}
    has_default = any(r.is_default for r in store.for_workload(key))
    default, *others = sparse_candidates(site.spec, site.knobs, measurer.target)
    # A fixed shuffle: few trials still sample the whole space, and a resumed run sees the
    # same candidates in the same order.
    random.Random(0).shuffle(others)
    candidates = [default, *others][:trials]
    paths = []
    for i, arr in enumerate(site.arrays):
        if arr is None:
            paths.append(None)
            continue
        path = os.path.join(measurer.workdir, f"{key.replace(':', '_')}_{i}.npy")
        np.save(path, arr)
        paths.append(path)
    measurer.arguments.paths = paths
    pending = [
        (n, knobs)
        for n, knobs in enumerate(candidates)
        if not ((n == 0 and has_default) or (n > 0 and json.dumps(knobs, sort_keys=True) in done))
    ]
    measured = 0
    try:
        funcs = [site.spec.build(knobs) for _, knobs in pending]
        for i, seconds in measurer.measure(funcs):
            n, knobs = pending[i]
            source = "default" if n == 0 else "candidate"
            store.append(Record("sparse", key, source, seconds, name=site.spec.name, knobs=knobs))
            measured += 1
            say(f"{tag} {site.spec.name} {n + 1}/{len(candidates)} {knobs}: {_ms(seconds)}")
        best = store.best(key)
        if best is not None and not _confirmed(store, key, best):
            default_func = site.spec.build(candidates[0])
            winner_func = site.spec.build(best.knobs)
            for pair in _confirm(measurer, default_func, winner_func):
                default_s, winner_s = pair
                store.append(Record("sparse", key, "default", default_s, knobs=candidates[0]))
                store.append(Record("sparse", key, "confirm", winner_s, knobs=best.knobs))
                measured += 2
            say(f"{tag} {site.spec.name} re-measured: {_verdict(store, key)}")
    finally:
        measurer.arguments.paths = None
    return _summary("sparse", site.spec.name, key, store, measured)


def _confirm(measurer, default_func, winner_func, rounds: int = 2):
    """Default and winner measured again, interleaved: ``rounds`` pairs of seconds."""
    times = dict(measurer.measure([default_func, winner_func] * rounds))
    return [(times[2 * i], times[2 * i + 1]) for i in range(rounds)]


def _confirmed(store: TuningCache, key: str, best: Record) -> bool:
    same = (lambda r: r.knobs == best.knobs) if best.knobs else (lambda r: r.record == best.record)
    return any(r.source == "confirm" and same(r) for r in store.for_workload(key))


def _verdict(store: TuningCache, key: str) -> str:
    best = store.best(key)
    return "tuned schedule kept" if best is not None else "default kept (gain was noise)"


def _summary(kind, name, key, store: TuningCache, measured) -> WorkloadResult:
    recs = store.for_workload(key)
    defaults = [r.latency_s for r in recs if r.is_default] or [math.inf]
    best = store.best(key)
    tuned = best.latency_s if best is not None else math.inf
    return WorkloadResult(kind, name, key, min(defaults), tuned, measured, len(recs))


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.4f} ms" if math.isfinite(seconds) else "failed"


# -- dense PrimFuncs ------------------------------------------------------------------------


def _tune_dense(name, func, store: TuningCache, measurer, trials, seed, say, tag):
    ms = measurer.ms
    key = dense_workload_key(func)
    previous = store.for_workload(key)
    measured = 0
    rule = tunable_rule(func, measurer.schedule_target)
    space = type(rule).__name__ if rule is not None else METASCHEDULE_SPACE
    if not any(r.is_default for r in previous):
        rules = schedule_rules(measurer.schedule_target)
        default = ApplySchedules(rules)._schedule(func, measurer.schedule_target)
        ((_, seconds),) = list(measurer.measure([default]))
        store.append(Record("dense", key, "default", seconds, name=name))
        measured += 1
        say(f"{tag} {name} default schedule: {_ms(seconds)}")
    tuned_before = [r for r in previous if not r.is_default and r.record is not None]
    remaining = trials - 1 - len(tuned_before)
    if remaining > 0:
        task_mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
        if rule is not None:
            task = _rule_space_task(rule, func, task_mod, store, key, measurer, seed)
            say(
                f"{tag} {name}: MetaSchedule over the {space} knobs, {len(task.knobs)} "
                f"unmeasured knob sets, {remaining} trials"
            )
        else:
            task = _metaschedule_task(task_mod, measurer, remaining, seed, name)
            say(
                f"{tag} {name}: no knob-sampling rule claims it, MetaSchedule's own design "
                f"space, {remaining} trials"
            )
        if task.context is not None:
            database = _cache_database(
                store, key, name, task_mod, tuned_before, say, tag, space, task.knobs_of
            )
            before = len(store.for_workload(key))
            ms.tune.tune_tasks(
                tasks=[task.context],
                task_weights=[1.0],
                work_dir=os.path.join(measurer.workdir, "ms"),
                max_trials_global=remaining,
                num_trials_per_iter=min(remaining, task.trials_per_iter),
                builder=measurer.builder,
                runner=measurer.runner,
                database=database,
                cost_model=task.cost_model,
                task_scheduler="round-robin",
            )
            measured += len(store.for_workload(key)) - before
    best = store.best(key)
    if best is not None and best.record is not None and not _confirmed(store, key, best):
        from .apply_tuning_records import _replay

        rules = schedule_rules(measurer.schedule_target)
        default = ApplySchedules(rules)._schedule(func, measurer.schedule_target)
        try:
            winner = _replay(func, best).mod["main"]
        except Exception as err:  # noqa: BLE001 - compile will not use it either
            say(f"{tag} {name}: the best record does not replay ({err}); default kept")
            return _summary("dense", name, key, store, measured)
        same_space = {"space": best.extra["space"]} if "space" in best.extra else {}
        for default_s, winner_s in _confirm(measurer, default, winner):
            store.append(Record("dense", key, "default", default_s, name=name))
            store.append(
                Record(
                    "dense",
                    key,
                    "confirm",
                    winner_s,
                    name=name,
                    knobs=best.knobs,
                    record=best.record,
                    extra=same_space,
                )
            )
            measured += 2
        say(f"{tag} {name} re-measured: {_verdict(store, key)}")
    result = _summary("dense", name, key, store, measured)
    result.space = space
    outcome = f"tuned {_ms(result.best_s)}" if result.tuned else "default kept"
    say(f"{tag} {name}: default {_ms(result.default_s)}, {outcome}")
    return result


@dataclass
class _DenseTask:
    """What ``tune_tasks`` needs for one dense workload, and the knobs of its design spaces."""

    context: Any  # TuneContext, or None when nothing is left to measure
    cost_model: Any
    trials_per_iter: int
    #: ``str`` of a design space's simplified trace -> the knobs that wrote it.
    knobs: dict[str, dict[str, int]] = field(default_factory=dict)

    def knobs_of(self, record) -> dict[str, int] | None:
        """The knobs of a MetaSchedule tuning record of this task (``None``: not a rule's)."""
        return self.knobs.get(_trace_key(record.trace)) if self.knobs else None


def _metaschedule_task(task_mod, measurer, remaining, seed, name) -> _DenseTask:
    """MetaSchedule's own design space, for a PrimFunc that no knob-sampling rule claims."""
    ms = measurer.ms
    context = ms.TuneContext(
        mod=task_mod,
        target=measurer.target,
        space_generator="post-order-apply",
        search_strategy=ms.search_strategy.EvolutionarySearch(
            population_size=min(512, max(64, 8 * remaining))
        ),
        task_name=name,
        rand_state=seed,
        num_threads=max(int(measurer.target.attrs.get("num-cores", 1)), 1),
    )
    return _DenseTask(context, "xgb", 16)


def _rule_space_task(rule, func, task_mod, store: TuningCache, key, measurer, seed) -> _DenseTask:
    """A task whose design spaces are the unmeasured points of ``rule``'s knob space.

    MetaSchedule replays traces, not the Python that wrote them, so it cannot re-draw a knob
    decision that the rule read with ``sch.get``: each point of the space is a design space of
    its own (its ``sample_categorical`` instructions are dead code that MetaSchedule's trace
    simplification drops) and no mutator applies, so the genetic stage is off. The search
    samples the design spaces, ranks the samples with the XGBoost model, measures the best
    and a few random ones, retrains, and repeats. The model learns from the first batch on
    (MetaSchedule's default waits for 100 measurements, more than most budgets) and starts
    with the default schedule's measurement.
    """
    ms = measurer.ms
    points = rule_space(rule, func, measurer.schedule_target)
    done = {_canon(r.knobs) for r in store.for_workload(key) if r.knobs is not None}
    fresh = [p for p in points[1:] if _canon(p.knobs) not in done]  # points[0]: the default
    if not fresh:
        return _DenseTask(None, None, 0)
    spaces = [p.sch for p in fresh]
    context = ms.TuneContext(
        mod=task_mod,
        target=measurer.target,
        space_generator=ms.space_generator.ScheduleFn(
            lambda _sch: [sch.copy() for sch in spaces],
            sch_rules=[],
            postprocs=[],  # the rule's schedule is complete, as tvm_sparse.compile uses it
            mutator_probs={},
        ),
        search_strategy=ms.search_strategy.EvolutionarySearch(
            population_size=min(512, max(64, 2 * len(spaces))),
            init_measured_ratio=0.0,  # measured points are design spaces no more
            init_min_unmeasured=min(50, len(spaces)),
            genetic_num_iters=0,
        ),
        task_name=f"{type(rule).__name__} knobs",
        rand_state=seed,
        num_threads=max(int(measurer.target.attrs.get("num-cores", 1)), 1),
    )
    model = ms.cost_model.XGBModel(num_warmup_samples=8)
    defaults = [r.latency_s for r in store.for_workload(key) if r.is_default]
    if defaults and math.isfinite(min(defaults)):
        candidate = ms.MeasureCandidate(
            points[0].sch, ms.arg_info.ArgInfo.from_entry_func(task_mod, remove_preproc=True)
        )
        model.update(context, [candidate], [ms.runner.RunnerResult([min(defaults)], None)])
    knobs = {_trace_key(p.sch.trace): p.knobs for p in fresh}
    return _DenseTask(context, model, 8, knobs)


def _trace_key(trace) -> str:
    return str(trace.simplified(remove_postproc=True))


def _canon(knobs: dict) -> str:
    return json.dumps(knobs, sort_keys=True)


def _cache_database(store: TuningCache, key, name, task_mod, previous, say, tag, space, knobs_of):
    """A MetaSchedule database in memory that writes every committed record to the cache.

    Each record notes the design space it comes from (``space``) and, for a rule's knob space,
    the knobs (``knobs_of(record)``), which a resumed run skips.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.database import MemoryDatabase, PyDatabase, TuningRecord

    @derived_object
    class _CacheDatabase(PyDatabase):
        def __init__(self):
            super().__init__()
            self.inner = MemoryDatabase()

        def has_workload(self, mod):
            return self.inner.has_workload(mod)

        def commit_workload(self, mod):
            return self.inner.commit_workload(mod)

        def commit_tuning_record(self, record):
            self.inner.commit_tuning_record(record)
            secs = [float(s) for s in (record.run_secs or [])]
            seconds = min(secs) if secs and max(secs) < 1e9 else math.inf
            if tvm_ffi.structural_equal(record.workload.mod, task_mod):
                knobs = knobs_of(record)
                rec = Record(
                    "dense",
                    key,
                    "metaschedule",
                    seconds,
                    name=name,
                    knobs=knobs,
                    record=_json(record),
                    extra={"space": space},
                )
                store.append(rec)
                trial = f"trial {len(store.for_workload(key))}" + (f" {knobs}" if knobs else "")
                say(f"{tag} {name} {trial}: {_ms(seconds)}")

        def get_top_k(self, workload, top_k):
            return self.inner.get_top_k(workload, top_k)

        def get_all_tuning_records(self):
            return self.inner.get_all_tuning_records()

        def __len__(self):
            return len(self.inner)

    database = _CacheDatabase()
    workload = database.inner.commit_workload(task_mod)
    for rec in previous:  # warm start of a resumed run; not written again
        record = TuningRecord.from_json(rec.record, workload)
        database.inner.commit_tuning_record(record)
    return database


def _json(record) -> Any:
    """``TuningRecord.as_json()`` as plain JSON (see :func:`~.cache.encode_tvm_json`)."""
    from tvm.s_tir.meta_schedule import _ffi_api

    # ``TuningRecord.as_json`` refuses the IndexMap of a ``transform_layout`` in the trace.
    return encode_tvm_json(_ffi_api.TuningRecordAsJSON(record))
