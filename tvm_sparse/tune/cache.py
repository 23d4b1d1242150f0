"""The tuning cache: one JSON-lines file per target, appended after every measured candidate.

Layout of ``<directory>/<kind>-<mcpu>-<hash of the target>.jsonl``::

    {"format": "tvm_sparse.tuning", "format_version": 1, "target": "<str(target)>"}
    {"kind": "dense", "workload": "<key>", "name": "fused_matmul", "source": "default",
     "latency_s": 1.2e-4, "tvm": "0.27.0.post1", "tvm_sparse": "0.1.0"}
    {"kind": "dense", "workload": "<key>", "source": "metaschedule", "latency_s": 9.1e-5,
     "space": "Matmul", "knobs": {"tile_rows": 8, "tile_vectors": 2, ...},
     "record": [<MetaSchedule TuningRecord.as_json()>], ...}
    {"kind": "sparse", "workload": "<key>", "name": "bsr_matmul[16x1]", "source": "candidate",
     "knobs": {"variant": "rows", "lanes": 16, "m_tile": 4, "group": 1}, "latency_s": ..., ...}

The first line is a header; every other line is one measured candidate (a dense one names the
design space it was found in: the rule whose knobs were searched, with the knobs, or
``"post-order-apply"``, MetaSchedule's own). ``"source": "default"`` is the untuned schedule
measured the same way, so a tuned record is applied only when it beats it; ``"confirm"`` is
the winner measured again, interleaved with the default, after the search (the fastest of many
noisy samples is flattered), and decides when present. Lines are flushed and fsynced one at a
time: a killed tuner loses at most the candidate it was measuring. When reading, a line that
does not parse (a torn last line) or was written by other versions is skipped with a warning;
a file that is not a tuning cache, or is one for another target or format version, raises
:class:`TuningCacheError` when tuning would append to it and is skipped with a warning when
compiling.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tvm
from tvm.target import Target

from .._paths import cache_root
from .._version import __version__
from ..timing import TimingPolicy

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "TuningCache",
    "TuningCacheError",
    "TuningCacheWarning",
    "default_cache_dir",
    "resolve_cache",
]

FORMAT = "tvm_sparse.tuning"
FORMAT_VERSION = 1
#: A tuned record must beat the measured default by this factor to be used: the margin of the
#: project's timing policy (:class:`tvm_sparse.timing.TimingPolicy`), as every timed choice.
MIN_GAIN = 1.0 / (1.0 + TimingPolicy().margin)


class TuningCacheError(ValueError):
    """A cache file that cannot be used: not a tuning cache, another target or format."""


class TuningCacheWarning(UserWarning):
    """Lines, files or records of the cache that were skipped (compiling goes on without them)."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/tvm_sparse/tuning`` (``~/.cache/tvm_sparse/tuning`` by default)."""
    return cache_root() / "tuning"


def _versions() -> dict[str, str]:
    return {"tvm": str(tvm.__version__), "tvm_sparse": __version__}


def target_file_name(target: Target) -> str:
    """``llvm-znver4-1a2b3c4d5e.jsonl``: readable kind and CPU, exact identity in the hash."""
    cpu = str(target.attrs.get("mcpu", "") or target.attrs.get("arch", "") or "generic")
    digest = hashlib.sha1(str(target).encode()).hexdigest()[:10]
    return f"{target.kind.name}-{cpu}-{digest}.jsonl"


@dataclass
class Record:
    """One measured candidate of one workload (a line of the cache)."""

    kind: str
    workload: str
    source: str
    latency_s: float
    name: str = ""
    knobs: dict[str, Any] | None = None
    record: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: ``<file>:<line>`` it was read from (not written), to name it in warnings.
    origin: str = field(default="", compare=False, repr=False)

    @property
    def is_default(self) -> bool:
        return self.source == "default"

    def describe(self) -> str:
        """Where the record is and what it holds, for warnings about it."""
        what = f"{self.source} record of {self.name or self.kind} workload {self.workload}"
        knobs = f" with knobs {self.knobs}" if self.knobs is not None else ""
        return f"{what}{knobs}" + (f" ({self.origin})" if self.origin else "")

    def to_json(self) -> dict[str, Any]:
        line = {
            "kind": self.kind,
            "workload": self.workload,
            "name": self.name,
            "source": self.source,
            "latency_s": self.latency_s if math.isfinite(self.latency_s) else None,
        }
        if self.knobs is not None:
            line["knobs"] = self.knobs
        if self.record is not None:
            line["record"] = self.record
        line.update(self.extra)
        line.update(_versions())
        return line

    @classmethod
    def from_json(cls, line: dict[str, Any]) -> Record:
        latency = line["latency_s"]
        knobs = line.get("knobs")
        if knobs is not None and not isinstance(knobs, dict):
            raise TypeError(f"knobs must be an object, not {type(knobs).__name__}")
        known = {"kind", "workload", "name", "source", "latency_s", "knobs", "record"}
        return cls(
            kind=str(line["kind"]),
            workload=str(line["workload"]),
            source=str(line["source"]),
            latency_s=math.inf if latency is None else float(latency),
            name=str(line.get("name", "")),
            knobs=knobs,
            record=line.get("record"),
            extra={k: v for k, v in line.items() if k not in known},
        )


class TuningCache:
    """Tuning records for one target, in one JSON-lines file.

    Parameters
    ----------
    target : tvm.target.Target
        Records are only valid for this target; it names the file.
    directory : str | os.PathLike, optional
        Where the per-target files live; :func:`default_cache_dir` if omitted.
    path : str | os.PathLike, optional
        An explicit file instead of ``directory / target_file_name(target)``.

    Use ``with cache:`` to make it the cache that ``tvm_sparse.compile`` picks up by default
    (TVM 0.27 cannot register new ``PassContext`` config keys from Python).
    """

    _current: list[TuningCache] = []

    def __init__(
        self,
        target: Target,
        directory: str | os.PathLike | None = None,
        *,
        path: str | os.PathLike | None = None,
    ) -> None:
        self.target = target
        directory = Path(directory) if directory is not None else default_cache_dir()
        self.path = Path(path) if path is not None else directory / target_file_name(target)
        self._records: dict[str, list[Record]] | None = None
        self.problem: str | None = None  # why the file was rejected, if it was
        #: The lines that reading skipped (as warned), for the compile report.
        self.skipped: list[str] = []

    def __enter__(self) -> TuningCache:
        TuningCache._current.append(self)
        return self

    def __exit__(self, *exc) -> None:
        TuningCache._current.remove(self)

    @staticmethod
    def current() -> TuningCache | None:
        """The innermost cache entered with ``with``, if any."""
        return TuningCache._current[-1] if TuningCache._current else None

    def __repr__(self) -> str:
        return f"TuningCache({str(self.path)!r})"

    # -- reading ---------------------------------------------------------------------------

    def records(self) -> dict[str, list[Record]]:
        """Records by workload key (read once; appends update it)."""
        if self._records is None:
            self._records = defaultdict(list)
            for rec in self._read(strict=False):
                self._records[rec.workload].append(rec)
        return self._records

    def __len__(self) -> int:
        return sum(len(v) for v in self.records().values())

    def for_workload(self, key: str) -> list[Record]:
        return list(self.records().get(key, []))

    def best(self, key: str) -> Record | None:
        """The fastest tuned record of ``key`` if it beats the measured default, else ``None``."""
        ranked = self.ranked(key)
        return ranked[0] if ranked else None

    def ranked(self, key: str) -> list[Record]:
        """The tuned records of ``key`` that beat the measured default, fastest first (the next
        ones stand in when a record turns out not to apply)."""
        recs = self.for_workload(key)
        defaults = [r.latency_s for r in recs if r.is_default and math.isfinite(r.latency_s)]
        tuned = [r for r in recs if not r.is_default and math.isfinite(r.latency_s)]
        if not defaults or not tuned:
            return []  # no measured baseline: cannot show that tuning is not slower
        # The fastest of many noisy samples is flattered; a re-measured winner is not.
        confirmed = [r for r in tuned if r.source == "confirm"]
        limit = MIN_GAIN * min(defaults)
        return sorted(
            (r for r in confirmed or tuned if r.latency_s < limit), key=lambda r: r.latency_s
        )

    def check(self) -> None:
        """Raise :class:`TuningCacheError` if the file exists but cannot take new records."""
        self._header(strict=True)

    def _header(self, *, strict: bool) -> bool:
        try:
            if not self.path.is_file() or self.path.stat().st_size == 0:
                return True
            with open(self.path, encoding="utf-8", errors="replace") as f:
                first = f.readline()
        except OSError as err:
            return self._reject(f"{self.path} cannot be read ({err})", strict)
        try:
            head = json.loads(first)
            fmt, version, target = head["format"], head["format_version"], head["target"]
        except (ValueError, KeyError, TypeError):
            return self._reject(f"{self.path} is not a tvm_sparse tuning cache", strict)
        if fmt != FORMAT or version != FORMAT_VERSION:
            return self._reject(
                f"{self.path} is a {fmt!r} file of format version {version!r}; this tvm_sparse "
                f"reads version {FORMAT_VERSION}: move it away or pass another cache path",
                strict,
            )
        if target != str(self.target):
            return self._reject(
                f"{self.path} holds records for target {target}, not {self.target}", strict
            )
        return True

    def _reject(self, message: str, strict: bool) -> bool:
        self.problem = message
        if strict:
            raise TuningCacheError(message)
        warnings.warn(f"{message}; ignoring it", TuningCacheWarning, stacklevel=4)
        return False

    def _warn(self, message: str) -> None:
        self.skipped.append(message)
        warnings.warn(message, TuningCacheWarning, stacklevel=4)

    def _read(self, *, strict: bool) -> Iterator[Record]:
        if not self._header(strict=strict) or not self.path.is_file():
            return
        versions = _versions()
        bad, foreign = [], 0
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                lines = f.readlines()[1:]
        except OSError as err:
            self._reject(f"{self.path} cannot be read ({err})", strict)
            return
        for number, text in enumerate(lines, start=2):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
                rec = Record.from_json(line)
            except Exception:  # noqa: BLE001 - any line that does not parse is skipped
                bad.append(number)
                continue
            if any(line.get(k) != v for k, v in versions.items()):
                foreign += 1
                continue
            rec.origin = f"{self.path}:{number}"
            yield rec
        if bad:
            self._warn(
                f"{self.path}: skipped {len(bad)} unreadable line(s) ({_lines(bad)}), "
                "e.g. from a tuner that was killed while writing"
            )
        if foreign:
            self._warn(
                f"{self.path}: skipped {foreign} record(s) of other tvm / tvm_sparse versions "
                f"(this is tvm {versions['tvm']}, tvm_sparse {versions['tvm_sparse']})"
            )

    # -- writing ---------------------------------------------------------------------------

    def append(self, record: Record) -> None:
        """Append one record and make it durable before returning."""
        self.check()
        self.records()  # read what is there before the file grows
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.is_file() or self.path.stat().st_size == 0
        with open(self.path, "a", encoding="utf-8") as f:
            if new:
                head = {"format": FORMAT, "format_version": FORMAT_VERSION}
                f.write(json.dumps({**head, "target": str(self.target)}) + "\n")
            elif not _ends_with_newline(self.path):
                f.write("\n")  # a torn line from a killed writer stays a line of its own
            f.write(json.dumps(record.to_json()) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._records[record.workload].append(record)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _lines(numbers: list[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:5])
    return f"line {shown}" + (", ..." if len(numbers) > 5 else "")


def encode_tvm_json(obj: Any) -> Any:
    """FFI arrays, maps and numbers as JSON values; any other TVM object (the ``IndexMap`` of a
    ``transform_layout`` in a trace) as its ``tvm.ir.save_json`` string, the form MetaSchedule's
    ``JSONDatabase`` writes and ``TuningRecord.from_json`` reads back."""
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    if isinstance(obj, (tvm.tirx.IntImm, tvm.tirx.FloatImm)):
        return obj.value
    if isinstance(obj, (tvm.ir.Array, list, tuple)):
        return [encode_tvm_json(v) for v in obj]
    if isinstance(obj, (tvm.ir.Map, dict)):
        return {str(k): encode_tvm_json(v) for k, v in obj.items()}
    return tvm.ir.save_json(obj)


def resolve_cache(cache: Any, target: Target) -> TuningCache | None:
    """Turn a ``tuning_cache=`` argument into a :class:`TuningCache` (or ``None``: disabled).

    ``True`` (the default of ``tvm_sparse.compile``) means the cache entered with ``with``, else
    the default directory; ``None`` / ``False`` disable it; a path is a directory of per-target
    files, or a ``.jsonl`` file.
    """
    if cache is None or cache is False:
        return None
    if cache is True:
        current = TuningCache.current()
        if current is not None:
            return (
                current
                if str(current.target) == str(target)
                else TuningCache(target, current.path.parent)
            )
        return TuningCache(target)
    if isinstance(cache, TuningCache):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        path = Path(cache)
        if path.suffix == ".jsonl":
            return TuningCache(target, path=path)
        return TuningCache(target, path)
    raise TypeError(
        f"tuning_cache must be True, None, a directory, a .jsonl path or a TuningCache, "
        f"not {type(cache).__name__}"
    )
