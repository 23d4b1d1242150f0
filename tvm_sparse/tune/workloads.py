"""The workloads of a model: the PrimFuncs ``ApplySchedules`` would receive in
``tvm_sparse.compile``, one per workload key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import tvm

from ..report import CompileReport
from ..targets import TargetPreset
from .space import SparseSite, dense_workload_key, is_dense_tunable, sparse_sites

__all__ = ["dense_workloads", "schedule_input", "sparse_workloads"]

T = TypeVar("T")


def schedule_input(
    model: Any,
    preset: TargetPreset,
    example_inputs: Any,
    dynamic_shapes: Any,
    dynamic_batch: bool,
    sparsity: str | dict,
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


def sparse_workloads(mod: tvm.IRModule) -> list[SparseSite]:
    """The calls of project sparse kernels in ``mod``, the first of each workload key."""
    return _first_of_each(sparse_sites(mod), lambda site: site.key)


def dense_workloads(mod: tvm.IRModule) -> list[tuple[str, tvm.tirx.PrimFunc]]:
    """The tunable dense PrimFuncs of ``mod`` (:func:`~.space.is_dense_tunable`) by name, the
    first of each workload key."""
    funcs = [
        (gvar.name_hint, func)
        for gvar, func in mod.functions_items()
        if isinstance(func, tvm.tirx.PrimFunc) and is_dense_tunable(func)
    ]
    return _first_of_each(funcs, lambda item: dense_workload_key(item[1]))


def _first_of_each(items: list[T], key: Callable[[T], str]) -> list[T]:
    first: dict[str, T] = {}
    for item in items:
        first.setdefault(key(item), item)
    return list(first.values())
