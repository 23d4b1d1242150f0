"""Measuring a calibration table on this machine, or on a device over TVM RPC.

:func:`calibrate` measures the full grid (a few minutes on this machine); with ``rpc`` it
builds here and measures on the board behind the RPC server (an Arm board: the table then
decides every compile for that target). :func:`calibrate_on_first_use`, which ``compile``
calls on a machine without a table, measures a quick grid (a few builds per kernel). Every
point is timed by the project's timing policy (:class:`~tvm_sparse.runtime.runner.Runner`),
progress is shown, and each point is kept as it is measured beside the table
(``<table>.partial.json``), so that a run killed half way resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from tvm import rpc as tvm_rpc
from tvm.target import Target

from .._progress import progress_fn
from ..kernels.cost_model import Calibration, default_cache_path, host_class
from ..runtime.runner import Runner
from ..targets import TargetPreset, resolve_target
from ..targets.backend import CPU, backend_of
from ..targets.host import is_host_target, machine_key

__all__ = ["QUICK_GRID", "calibrate", "calibrate_on_first_use"]

DEFAULT_BLOCKS = ((16, 1), (32, 1), (8, 1), (4, 1), (1, 4), (4, 4), (16, 16), (1, 1))
DEFAULT_DENSITIES = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5)
DEFAULT_MS = (1, 16, 128)
#: The grid of a compile's first use of a machine: the block shapes the pruners produce most,
#: one row and a batch of rows, and densities up to half: the table gives no estimate (so a
#: layer gets no sparse candidate to time) far above its densest point.
QUICK_GRID = {
    "ms": (1, 128),
    "blocks": ((16, 1), (8, 1), (1, 4), (1, 1)),
    "densities": (0.05, 0.2, 0.5),
    "nm": ((2, 4), (4, 8)),
}


def calibrate(
    target: str | dict | Target | TargetPreset,
    *,
    rpc: tvm_rpc.RPCSession | str | Runner | None = None,
    n: int = 1024,
    k: int = 768,
    ms: tuple[int, ...] = DEFAULT_MS,
    blocks: tuple[tuple[int, int], ...] = DEFAULT_BLOCKS,
    densities: tuple[float, ...] = DEFAULT_DENSITIES,
    nm: tuple[tuple[int, int], ...] = ((2, 4), (4, 8)),
    cache_path: str | os.PathLike | None = None,
    save: bool = True,
    progress: bool | Callable[[str], None] = True,
) -> Calibration:
    """Measure a calibration table on this machine and (by default) store it as the cache file.

    Takes a few minutes with the defaults on this machine (one build per kernel, ``M`` and
    density); over RPC, as long as the board takes to run them.

    Parameters
    ----------
    target : str | dict | tvm.target.Target | TargetPreset
        The target to build for: one this machine runs, or, with ``rpc``, the board's.
    rpc : tvm.rpc.RPCSession | str, optional
        Measure on the device behind this session, or behind ``HOST:PORT`` (an RPC server) or
        ``HOST:PORT:KEY`` (a board registered with a tracker). The table is then stored for
        ``target`` (the device it describes) and decides compiles for that target.
    n, k : int
        Weight shape used for the measurements.
    ms, blocks, densities, nm : tuple
        The grid measured.
    cache_path : str | os.PathLike, optional
        Where to store the table; defaults to :func:`default_cache_path`.
    save : bool
        Store the table (and keep measured points while running, to resume after a kill).
    progress : bool | callable
        Print a line per point to stderr, or call this function with each message.
    """
    # looked up at each call, where a test may have replaced a measurement
    from .kernel_timing import measure_bsr, measure_dense, measure_nm

    preset = resolve_target(target)
    target = preset.tvm_target()
    if backend_of(target) is not CPU:
        raise ValueError(
            f"calibrate measures CPU kernels; {target.kind.name} targets are not calibrated "
            "(their reports say so)"
        )
    if rpc is None:
        if not is_host_target(target):
            raise ValueError(
                f"calibrate measures on this machine, which cannot run {target}; pass "
                "rpc='HOST:PORT' (or a tvm.rpc session) of the device the target describes"
            )
        runner, device = Runner(), machine_key()
    else:
        runner = Runner.connect(rpc, preset.cross_compiler)
        device = runner.name
    say = progress_fn(progress)
    points: list[tuple[str, int, float | None, Callable[[], float]]] = []
    for m in ms:
        points.append(("dense", m, None, partial(measure_dense, target, m, n, k, runner=runner)))
    for block in blocks:
        kernel = f"bsr_matmul[{block[0]}x{block[1]}]"
        points += [(kernel, m, d, partial(measure_bsr, target, m, n, k, block, d, runner=runner))
                   for m in ms for d in densities]  # fmt: skip
    for keep, group in nm:
        kernel = f"nm_matmul[{keep}:{group}]"
        measure = partial(measure_nm, target, n=n, k=k, nm=(keep, group), runner=runner)
        points += [(kernel, m, keep / group, partial(measure, m=m)) for m in ms]

    path = Path(cache_path) if cache_path is not None else default_cache_path(target, runner.board)
    unfinished = path.with_name(path.name + ".partial.json")
    grid = f"{device}|{target}|n={n}|k={k}"
    rates = _resume(unfinished, grid) if save else {}
    start = time.perf_counter()
    for i, (kernel, m, d, measure) in enumerate(points):
        key = f"{kernel}|{m}|{d}"
        if key in rates:
            continue
        where = f"M={m}" + ("" if d is None else f", density {d:g}")
        say(f"calibrating {host_class(target)} ({device}): {i + 1}/{len(points)} {kernel} {where}")
        rates[key] = measure()
        if save:
            _write(unfinished, {"grid": grid, "rates": rates})
    say(f"calibrated {len(points)} points in {time.perf_counter() - start:.0f} s")

    dense: dict[int, float] = {}
    sparse: dict[str, dict[int, dict[float, float]]] = {}
    for kernel, m, d, _ in points:
        rate = rates[f"{kernel}|{m}|{d}"]
        if d is None:
            dense[m] = rate
        else:
            sparse.setdefault(kernel, {}).setdefault(m, {})[d] = rate
    table = Calibration(
        host=host_class(target), dense=dense, sparse=sparse,
        source=f"measured on {target}", machine=device,
    )  # fmt: skip
    if save:
        table.save(path)
        unfinished.unlink(missing_ok=True)
    return table


def calibrate_on_first_use(
    target: Target,
    *,
    rpc: tvm_rpc.RPCSession | str | Runner | None = None,
    progress: bool | Callable[[str], None] = True,
) -> Calibration | None:
    """Measure the quick grid (:data:`QUICK_GRID`) for ``target`` where its device (this
    machine, or the board behind ``rpc``) has no table of its own yet; ``None`` where it has
    one, or where ``target`` does not run here and no ``rpc`` is given."""
    runner = None if rpc is None else Runner.connect(rpc, resolve_target(target).cross_compiler)
    if runner is None and not is_host_target(target):
        return None
    if default_cache_path(target, runner.board if runner else None).is_file():
        return None
    return calibrate(target, rpc=runner, progress=progress, **QUICK_GRID)


def _resume(partial: Path, grid: str) -> dict[str, float]:
    """Points measured by a run of the same grid on this machine that did not finish."""
    try:
        record = json.loads(partial.read_text())
        if record.get("grid") != grid:
            return {}
        return {str(k): float(v) for k, v in record["rates"].items() if float(v) > 0}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)  # atomic: a kill leaves the last whole record
