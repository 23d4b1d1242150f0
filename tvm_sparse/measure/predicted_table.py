"""Calibration tables predicted without the device, for Arm targets no board has measured yet.

    python -m tvm_sparse.measure.predicted_table   # rewrites the shipped arm_neon-*.json

Each rate is the hot loop's FLOPs per cycle as ``llvm-mca`` predicts them
(:mod:`tvm_sparse.static_throughput`), at the core's nominal clock, on every core of the
target: the dense matmul as the pipeline builds it and every sparse kernel, on the grid of
shapes and densities that :func:`~tvm_sparse.measure.calibrate` measures. The table is marked
``estimated``, and so is every decision it makes; a table measured on the board over RPC
(``calibrate(target, rpc=...)``) takes its place.

What the prediction leaves out, the table leaves out: every load hits L1 and only the hot loop
counts. A kernel's hot loop is the same code at every density (only the arrays it walks grow),
so each kernel and ``M`` is predicted once and its rate holds for every density: the fixed
costs of a block row (zeroing, storing), which weigh most at the lowest densities, and the
memory traffic, which bounds the one-row (``M = 1``) kernels on a board, are not in it. The
rates of one row are therefore compute bounds of dense and sparse alike, and the table ranks
kernels by the work their loops do, not by the bytes they read.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import tvm
from tvm.target import Target

from .._progress import progress_fn
from ..kernels.cost_model import Calibration, host_class, package_table_path
from ..static_throughput import assembly, core_of, kernel_throughput
from ..targets import TargetPreset, resolve_target
from ..targets.facts import num_cores
from .calibrate_host import DEFAULT_BLOCKS, DEFAULT_DENSITIES, DEFAULT_MS
from .kernel_timing import bsr_case, dense_case, nm_case

__all__ = ["ARM_PRESETS", "predict_calibration", "write_package_tables"]

#: The presets whose tables ship, one per core: the cores' LLVM models differ (the A72 is
#: predicted with the Cortex-A57's, the A76 with the Neoverse-N1's) and so do their clocks,
#: and a board's measured table replaces its own core's only.
ARM_PRESETS = ("arm-cortex-a72", "arm-cortex-a76", "arm-neoverse-n1")


def _rate(executable, target: Target) -> float:
    """Predicted GFLOP/s on every core of ``target`` of the build's hot loop."""
    kernels = kernel_throughput(assembly(executable), target)
    if not kernels:
        raise ValueError(f"no floating-point loop in the build for {target}")
    hot = max(kernels.values(), key=lambda k: k.flops)
    return hot.gflops * num_cores(target)


def _prim_func_rate(func: tvm.tirx.PrimFunc, target: Target) -> float:
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target)
    return _rate(lib, target)


def predict_calibration(
    target: str | dict | Target | TargetPreset,
    *,
    n: int = 1024,
    k: int = 768,
    ms: tuple[int, ...] = DEFAULT_MS,
    blocks: tuple[tuple[int, int], ...] = DEFAULT_BLOCKS,
    densities: tuple[float, ...] = DEFAULT_DENSITIES,
    nm: tuple[tuple[int, int], ...] = ((2, 4), (4, 8)),
    progress: bool | Callable[[str], None] = True,
) -> Calibration:
    """The table ``llvm-mca`` predicts for ``target`` (an llvm target of a core it models).

    Parameters are those of :func:`~tvm_sparse.measure.calibrate`; each kernel and ``M`` is
    built once (the hot loop does not change with density) and its rate fills every density.

    Raises
    ------
    RuntimeError
        If ``llvm-mca`` is not installed.
    """
    target = resolve_target(target).tvm_target()
    say = progress_fn(progress)
    core = core_of(target)
    model = f"{core.mcpu}" + (f" ({core.note})" if core.note else "")
    dense = {}
    for m in ms:
        say(f"predicting {host_class(target)} ({model}): dense M={m}")
        dense[m] = _rate(dense_case(target, m, n, k)[0], target)
    sparse: dict[str, dict[int, dict[float, float]]] = {}
    for block in blocks:
        kernel = f"bsr_matmul[{block[0]}x{block[1]}]"
        for m in ms:
            say(f"predicting {host_class(target)} ({model}): {kernel} M={m}")
            func = bsr_case(target, m, n, k, block, densities[0])[0]
            rate = _prim_func_rate(func, target)
            sparse.setdefault(kernel, {})[m] = dict.fromkeys(densities, rate)
    for keep, group in nm:
        kernel = f"nm_matmul[{keep}:{group}]"
        for m in ms:
            say(f"predicting {host_class(target)} ({model}): {kernel} M={m}")
            func = nm_case(target, m, n, k, (keep, group))[0]
            sparse.setdefault(kernel, {})[m] = {keep / group: _prim_func_rate(func, target)}
    return Calibration(
        host=host_class(target),
        dense=dense,
        sparse=sparse,
        source=(
            f"predicted for {model} at {core.ghz} GHz on {num_cores(target)} cores "
            "(hot loops only, every load an L1 hit)"
        ),
        estimated=True,
    )


def write_package_tables(
    presets: tuple[str, ...] = ARM_PRESETS, progress: bool | Callable[[str], None] = True
) -> list[Path]:
    """Predict and write the shipped table of each preset; returns the files written."""
    written = []
    for name in presets:
        target = resolve_target(name).tvm_target()
        path = package_table_path(target)
        predict_calibration(target, progress=progress).save(path)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_package_tables(tuple(sys.argv[1:]) or ARM_PRESETS):
        print(path)
