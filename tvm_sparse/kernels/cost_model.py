"""A measured cost model: is a sparse kernel faster than the dense build of the same layer?

The model is a calibration table of throughputs measured on one host class:

* ``dense``: GFLOP/s of the dense matmul the rest of the pipeline builds, per number of
  activation rows ``M``;
* ``sparse[kernel][block]``: GFLOP/s counted over the *stored* nonzeros (``2 * M * stored``),
  per ``M`` and per stored density. Below the lowest measured density the rate is taken as
  that of the lowest one (fixed per-row overheads make rates fall at very low density, which
  the table captures where it was measured).

A layer's time is ``flops / rate``, interpolated linearly in density and in ``log2(M)``.
``choose`` never picks a sparse kernel the table says is slower than dense: it needs
``dense_time / sparse_time >= min_speedup`` (default 1.1, a margin for the model's error).

The table of one AVX-512 host ships as ``calibration/x86_avx512.json``, and for each Arm
preset's core a table estimated from ``llvm-mca``'s prediction of every kernel's hot loop
(``calibration/arm_neon-<core>.json``, written by :mod:`tvm_sparse.measure.predicted_table`):
its decisions say "estimated" until a board measures its own table over RPC.
:func:`~tvm_sparse.measure.calibrate` measures a table on this machine and stores it as a
cache file, one per machine (CPU model and cores), TVM and tvm_sparse version, that
:func:`load_calibration` prefers (``compile`` measures a quick one on its first use of a
machine). A cache file that cannot be read, is of another format version, was measured on
another machine or holds rates the model cannot use (zero, negative, missing) is ignored with
a :class:`CalibrationWarning`: the shipped table is used instead.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tvm
from tvm.target import Target

from .._paths import cache_root
from .._version import __version__
from ..targets.backend import CPU, backend_of
from ..targets.facts import vector_bits
from ..targets.host import is_host_target, machine_key

__all__ = [
    "Calibration",
    "CalibrationWarning",
    "Estimate",
    "default_cache_path",
    "load_calibration",
    "package_table_path",
]

_PACKAGE_TABLES = Path(__file__).parent / "calibration"
# How far above the densest calibrated point an estimate may reach.
_EXTRAPOLATION = 1.25
#: Written into stored tables; a table without one predates it and has the same layout.
FORMAT_VERSION = 1
#: Part of the keys of what the project measures and caches (calibration tables, layer
#: timings): raised when a kernel's speed changes, so that what was measured with the old
#: kernels is measured again (2: the x86 N:M kernel permutes broadcast inputs; 3: the BSR
#: ``"m"`` variant transposes an ``(M, K)`` input per task, and sparse kernels apply a GELU
#: after them under fast math; 4: N:M is rated by the faster of the permute and gather kernels,
#: whose weights stream task by task).
KERNEL_REVISION = 4


class CalibrationWarning(UserWarning):
    """A calibration table on disk was ignored; the shipped table is used instead."""


@dataclass(frozen=True)
class Estimate:
    """Estimated seconds of one layer, dense and with one sparse kernel."""

    kernel: str
    dense_s: float
    sparse_s: float

    @property
    def speedup(self) -> float:
        return self.dense_s / self.sparse_s if self.sparse_s > 0 else math.inf


@dataclass
class Calibration:
    """Measured throughputs of the dense and sparse kernels on one host class.

    Attributes
    ----------
    host : str
        Which host class the numbers were measured on (``"x86_avx512"``, ...).
    dense : dict[int, float]
        ``M`` -> GFLOP/s of the dense matmul.
    sparse : dict[str, dict[int, dict[float, float]]]
        Kernel key (``"bsr_matmul[16x1]"``, ``"nm_matmul[2:4]"``) -> ``M`` -> density ->
        GFLOP/s over stored values.
    source : str
        How the table was made (for the report).
    machine : str
        :func:`~tvm_sparse.targets.machine_key` of the machine that measured it (empty for a
        shipped table).
    evidence : str
        Whether the table fits the target it is used for, set by :func:`load_calibration`:
        ``calibrated (...)``, ``estimated (...)`` or ``uncalibrated (...)``; every decision it
        makes carries it.
    estimated : bool
        The rates are predicted, not measured (:mod:`tvm_sparse.measure.predicted_table`).
    """

    host: str
    dense: dict[int, float]
    sparse: dict[str, dict[int, dict[float, float]]] = field(default_factory=dict)
    source: str = ""
    machine: str = field(default="", compare=False)
    evidence: str = field(default="", compare=False)
    estimated: bool = False

    # -- (de)serialisation -------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "host": self.host,
            "source": self.source,
            "machine": self.machine,
            "estimated": self.estimated,
            "dense": {str(m): v for m, v in sorted(self.dense.items())},
            "sparse": {
                key: {
                    str(m): {f"{d:g}": v for d, v in sorted(by_d.items())}
                    for m, by_d in sorted(by_m.items())
                }
                for key, by_m in sorted(self.sparse.items())
            },
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Calibration:
        """The table of ``obj``; raises ``ValueError`` (or ``KeyError``, ``TypeError``) if it is
        of another format version or holds what the estimates cannot use."""
        if not isinstance(obj, dict):
            raise TypeError(f"a calibration table is a JSON object, not {type(obj).__name__}")
        version = obj.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(
                f"format version {version!r}; this tvm_sparse reads version {FORMAT_VERSION}"
            )
        table = cls(
            host=str(obj["host"]),
            source=str(obj.get("source", "")),
            machine=str(obj.get("machine", "")),
            estimated=bool(obj.get("estimated", False)),
            dense={int(m): float(v) for m, v in obj["dense"].items()},
            sparse={
                key: {
                    int(m): {float(d): float(v) for d, v in by_d.items()}
                    for m, by_d in by_m.items()
                }
                for key, by_m in obj["sparse"].items()
            },
        )
        table._check()
        return table

    def _check(self) -> None:
        """Every rate the estimates divide by is a positive number, and no table is empty."""
        if not self.dense or not all(by_m and all(by_m.values()) for by_m in self.sparse.values()):
            raise ValueError("a kernel without measurements")
        points = [("dense", m, None, v) for m, v in self.dense.items()]
        for key, by_m in self.sparse.items():
            points += [(key, m, d, v) for m, by_d in by_m.items() for d, v in by_d.items()]
        for key, m, d, v in points:
            if m < 1 or not (d is None or 0 < d <= 1) or not (math.isfinite(v) and v > 0):
                where = f"M={m}" + (f", density {d:g}" if d is not None else "")
                raise ValueError(f"{key} at {where}: rate {v} GFLOP/s")

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1, sort_keys=True))

    # -- estimates ----------------------------------------------------------------------------

    def has_kernel(self, kernel: str) -> bool:
        return kernel in self.sparse

    def dense_seconds(self, m: int, n: int, k: int) -> float:
        rate = _interp_m(self.dense, m, lambda v: v)
        return 2.0 * m * n * k / (rate * 1e9)

    def sparse_seconds(self, kernel: str, m: int, stored: int, density: float) -> float:
        """Seconds for ``kernel`` over ``stored`` values (explicit zeros in blocks included).

        Infinite above the densest point measured: a sparse kernel is chosen only on evidence.
        """
        table = self.sparse[kernel]
        measured = max(d for by_d in table.values() for d in by_d)
        if density > measured * _EXTRAPOLATION:
            return math.inf
        rate = _interp_m(table, m, lambda by_d: _interp_density(by_d, density))
        return 2.0 * m * max(stored, 1) / (rate * 1e9)

    def estimate(
        self, kernel: str, m: int, n: int, k: int, stored: int, density: float
    ) -> Estimate:
        return Estimate(
            kernel=kernel,
            dense_s=self.dense_seconds(m, n, k),
            sparse_s=self.sparse_seconds(kernel, m, stored, density),
        )


def _interp_density(by_density: dict[float, float], density: float) -> float:
    points = sorted(by_density.items())
    xs = [d for d, _ in points]
    if density <= xs[0]:
        return points[0][1]
    if density >= xs[-1]:
        return points[-1][1]
    i = bisect.bisect_right(xs, density)
    (x0, y0), (x1, y1) = points[i - 1], points[i]
    return y0 + (y1 - y0) * (density - x0) / (x1 - x0)


def _interp_m(by_m: dict[int, Any], m: int, value) -> float:
    ms = sorted(by_m)
    if m <= ms[0]:
        return value(by_m[ms[0]])
    if m >= ms[-1]:
        return value(by_m[ms[-1]])
    i = bisect.bisect_right(ms, m)
    m0, m1 = ms[i - 1], ms[i]
    t = (math.log2(m) - math.log2(m0)) / (math.log2(m1) - math.log2(m0))
    return value(by_m[m0]) * (1 - t) + value(by_m[m1]) * t


# -- where tables live ------------------------------------------------------------------------


def host_class(target: Target) -> str:
    """The calibration host class of ``target``: ``x86_avx512``, ``x86_avx2``, ``arm_neon``,
    ``cpu_generic``."""
    if backend_of(target, allow_none=True) is not CPU:
        return "cpu_generic"
    if str(target.attrs.get("mtriple", "") or "").startswith("aarch64"):
        return "arm_neon"
    return {512: "x86_avx512", 256: "x86_avx2"}.get(vector_bits(target), "cpu_generic")


def package_table_path(target: Target) -> Path:
    """The shipped table of ``target``: ``calibration/<host class>-<core>.json`` for an Arm core
    (the ``mcpu`` of its preset), else ``calibration/<host class>.json``; the file may not
    exist."""
    wanted = host_class(target)
    mcpu = str(target.attrs.get("mcpu", "") or "") if wanted == "arm_neon" else ""
    return _PACKAGE_TABLES / (f"{wanted}-{mcpu}.json" if mcpu else f"{wanted}.json")


def _estimated(table: Calibration, how: str) -> str:
    return f"estimated (Arm table estimated from llvm-mca, not measured: {table.source}; {how})"


def default_cache_path(target: Target, device: str | None = None) -> Path:
    """``$XDG_CACHE_HOME/tvm_sparse/calibration/<host class>-<key>.json`` (``~/.cache`` by
    default), where the key stands for the machine measured and the TVM and tvm_sparse
    versions: kernels change between versions, and rates between machines. For a target this
    machine runs, the machine is this one (CPU model, cores), or ``device`` (the name of a
    board measured over RPC that runs the same code); for another target, the target itself
    (triple, CPU, features, cores) names the board."""
    if is_host_target(target):
        device = machine_key() if device is None else f"{device}|{target}"
    else:
        device = str(target)
    key = "\0".join((device, tvm.__version__, __version__, str(KERNEL_REVISION)))
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_root() / "calibration" / f"{host_class(target)}-{digest}.json"


def load_calibration(
    target: Target, *, cache_path: str | os.PathLike | None = None, device: str | None = None
) -> Calibration:
    """The calibration for ``target``: the cache file if present, else the shipped table.

    Parameters
    ----------
    target : tvm.target.Target
        Picks the host class.
    cache_path : str | os.PathLike, optional
        A table written by :func:`calibrate`; defaults to :func:`default_cache_path`.
    device : str, optional
        The board measured over RPC (:attr:`tvm_sparse.runtime.runner.Runner.name`) whose
        table is wanted, where ``target`` also runs here; default: this machine's.
    """
    path = Path(cache_path) if cache_path is not None else default_cache_path(target, device)
    here = is_host_target(target) and device is None
    wanted = host_class(target)
    try:
        if path.is_file():
            table = Calibration.from_json(json.loads(path.read_text()))
            if table.machine and table.machine != machine_key() and here:
                raise ValueError(f"measured on {table.machine}, this machine is {machine_key()}")
            where = "" if here else f" on {table.machine}"
            if table.estimated:
                table.evidence = _estimated(table, f"not measured: {path.name}")
            else:
                table.evidence = (
                    f"calibrated ({table.host} table measured by calibrate{where}: {path.name})"
                )
            return table
    except Exception as err:  # noqa: BLE001 - a bad cache file must not stop a compile
        warnings.warn(
            f"calibration table {path} ignored ({type(err).__name__}: {err}); using the shipped "
            f"table instead (run tvm_sparse.measure.calibrate again to replace the file)",
            CalibrationWarning,
            stacklevel=2,
        )
    shipped = package_table_path(target)
    if not shipped.is_file():
        # No table of this host class (or Arm core) ships: the AVX-512 one stands in, and
        # says so.
        shipped = _PACKAGE_TABLES / "x86_avx512.json"
    table = Calibration.from_json(json.loads(shipped.read_text()))
    cpu = backend_of(target, allow_none=True) is CPU
    if table.host == wanted and cpu and table.estimated:
        table.evidence = _estimated(
            table, "tvm_sparse.measure.calibrate(target, rpc='HOST:PORT') measures the device"
        )
    elif table.host == wanted and cpu:
        table.evidence = (
            f"calibrated for the host class (shipped {table.host} table, {table.source}; "
            "tvm_sparse.measure.calibrate(target) measures this machine)"
        )
    else:
        if is_host_target(target):
            how = "tvm_sparse.measure.calibrate(target) measures one on this machine"
        elif cpu:
            how = "tvm_sparse.measure.calibrate(target, rpc='HOST:PORT') measures the device"
        else:
            how = f"{target.kind.name} targets are not calibrated"
        table.evidence = f"uncalibrated: no {wanted} table, the {table.host} table stands in; {how}"
    return table
