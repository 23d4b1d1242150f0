"""Threads for compiled CPU models: tvm_sparse's parallel launcher in place of TVM's pool.

Every parallel loop that TVM generates for a CPU calls one function pointer in the loaded
library, ``__TVMBackendParallelLaunch``. TVM's pool assigns task ``i`` to worker ``i``,
pins each worker to one core, and waits for every worker to run its task; a worker whose
core another process holds delays the caller by up to a scheduler time slice, at every
parallel loop of the model. :func:`install` points the library at ``thread_pool.c``
instead, where the caller and the workers claim tasks from one counter: work a worker has
not started is done by the caller, and nothing waits for a thread that is not running.

The launcher is compiled with the system C compiler (which ``export_library`` needs too)
once per process, into a temporary directory. Where that cannot be done, or a library
uses parallel barriers (which need every task to run at once), the library keeps TVM's
pool and :func:`install` says why.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from ..targets.host import available_cores

__all__ = [
    "ThreadConfig",
    "available_cores",
    "configure",
    "install",
    "load_module",
    "pool_stats",
]

_SOURCE = Path(__file__).with_name("thread_pool.c")
_LAUNCH_SYMBOL = "__TVMBackendParallelLaunch"
_BARRIER_SYMBOL = "__TVMBackendParallelBarrier"


@dataclasses.dataclass(frozen=True)
class ThreadConfig:
    """How a compiled CPU model runs its parallel loops.

    Parameters
    ----------
    num_threads
        Threads per parallel loop, the calling thread included; ``None``: one per available
        core (:func:`available_cores`). ``1`` runs every kernel on the calling thread.
    pin
        Pin each worker to one core. Off by default: a pinned worker cannot move away from a
        core that another process is using, so it waits there for its turn. Pinning can help
        on a machine reserved for the model.
    spin_us
        How long a worker keeps polling for the next parallel loop before it sleeps. The
        kernels of one call follow each other within microseconds; a longer spin takes CPU
        time from whatever else runs between calls.
    tasks_per_thread
        The least number of tasks each loop is cut into, per thread: more tasks let a thread
        that got less of its core do less of the work.
    task_us
        The task length the launcher aims at: it times each parallel loop and cuts its next
        run into tasks of about this long (at least ``tasks_per_thread`` per thread), so that
        at the end of a loop no thread waits long for another's last task. ``0`` keeps
        ``tasks_per_thread``.
    slice_us
        The scheduler time slice each worker asks for (Linux 6.12 and newer; older kernels
        ignore it). A worker woken on a core where another thread is running (a busy
        process, another runtime's spinning pool) gets the core within about this long
        instead of after the other thread's default slice, which can outlast a whole call.
        ``0`` keeps the kernel's default. The calling thread is left as it is.
    """

    num_threads: int | None = None
    pin: bool = False
    spin_us: float = 100.0
    tasks_per_thread: int = 4
    task_us: float = 50.0
    slice_us: float = 100.0

    def __post_init__(self) -> None:
        if self.num_threads is not None and (
            not isinstance(self.num_threads, int) or self.num_threads < 1
        ):
            raise ValueError(
                "num_threads must be a positive int or None (one per core), "
                f"got {self.num_threads!r}"
            )
        if self.spin_us < 0:
            raise ValueError(f"spin_us must be >= 0, got {self.spin_us!r}")
        if self.slice_us < 0:
            raise ValueError(f"slice_us must be >= 0, got {self.slice_us!r}")
        if self.task_us < 0:
            raise ValueError(f"task_us must be >= 0, got {self.task_us!r}")
        if not isinstance(self.tasks_per_thread, int) or not 1 <= self.tasks_per_thread <= 64:
            raise ValueError(
                f"tasks_per_thread must be an int in 1..64, got {self.tasks_per_thread!r}"
            )

    @property
    def threads(self) -> int:
        return self.num_threads or available_cores()

    def describe(self) -> str:
        pin = "pinned" if self.pin else "unpinned"
        return f"{self.threads} thread(s), {pin}, tasks of {self.task_us:g} us"


class _Pool:
    """The compiled launcher, loaded once per process."""

    def __init__(self) -> None:
        self.lib: ctypes.CDLL | None = None
        self.problem: str | None = None
        self.applied: ThreadConfig | None = None
        self.lock = threading.Lock()
        self._loaded = False

    def load(self) -> ctypes.CDLL | None:
        with self.lock:
            if not self._loaded:
                self._loaded = True
                try:
                    self.lib = _build()
                except (OSError, subprocess.CalledProcessError) as err:
                    self.problem = f"the parallel launcher did not build ({err})"
            return self.lib

    def apply(self, config: ThreadConfig) -> None:
        """Configure the launcher for the next calls; cheap when nothing changed."""
        if config == self.applied or self.lib is None:
            return
        with self.lock:
            cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
            ffi = _ffi_error_functions()
            self.lib.tsp_configure(
                config.threads,
                config.tasks_per_thread,
                int(config.task_us * 1000),
                int(config.spin_us * 1000),
                int(config.slice_us * 1000),
                int(config.pin),
                (ctypes.c_int * max(len(cpus), 1))(*cpus),
                len(cpus),
                *ffi,
            )
            self.applied = config


_POOL = _Pool()


def _build() -> ctypes.CDLL:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler (cc or gcc) on PATH")
    out_dir = tempfile.mkdtemp(prefix="tvm_sparse_threads_")
    out = os.path.join(out_dir, "thread_pool.so")
    cmd = [compiler, "-O2", "-shared", "-fPIC", "-o", out, str(_SOURCE), "-lpthread"]
    subprocess.run(cmd, check=True, capture_output=True)
    lib = ctypes.CDLL(out)
    shutil.rmtree(out_dir, ignore_errors=True)  # mapped already; nothing reads the file again
    lib.tsp_configure.argtypes = [
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
        ctypes.c_long,
        ctypes.c_long,
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_int),
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    lib.tsp_configure.restype = ctypes.c_int
    lib.tsp_stats.argtypes = [ctypes.POINTER(ctypes.c_long)]
    return lib


def _ffi_error_functions() -> tuple[int | None, int | None, int | None]:
    """Addresses of TVM FFI's error hand-over functions, so a task that fails on a worker
    raises its error in the calling thread."""
    try:
        import tvm_ffi.libinfo

        ffi = ctypes.CDLL(tvm_ffi.libinfo.find_libtvm_ffi())
        names = ("TVMFFIErrorMoveFromRaised", "TVMFFIErrorSetRaised", "TVMFFIObjectDecRef")
        return tuple(ctypes.cast(getattr(ffi, n), ctypes.c_void_p).value for n in names)
    except (ImportError, OSError, AttributeError):
        return (None, None, None)


def install(library: str | os.PathLike, config: ThreadConfig) -> str | None:
    """Make a loaded TVM library run its parallel loops on tvm_sparse's launcher.

    ``library`` is the path the library was loaded from (``tvm.runtime.load_module``); the
    dynamic loader hands back the same mapping. Returns ``None`` when installed, or why the
    library keeps TVM's pool.
    """
    pool = _POOL.load()
    if pool is None:
        return _POOL.problem
    lib = ctypes.CDLL(os.fspath(library))
    try:
        slot = ctypes.c_void_p.in_dll(lib, _LAUNCH_SYMBOL)
    except ValueError:
        return "the library has no parallel loops"
    try:
        ctypes.c_void_p.in_dll(lib, _BARRIER_SYMBOL)
        return "the library synchronises parallel tasks (parallel barriers)"
    except ValueError:
        pass
    _POOL.apply(config)
    slot.value = ctypes.cast(pool.tsp_parallel_launch, ctypes.c_void_p).value
    return None


def load_module(
    executable: Any, config: ThreadConfig, *, path: str | os.PathLike | None = None
) -> tuple[Any, str | None]:
    """Load CPU code so that its parallel loops run on the launcher.

    ``executable`` is what ``tvm.compile`` returns, or a module already loaded from ``path``.
    The in-memory code of ``tvm.compile`` calls TVM's pool directly, so it is exported to a
    temporary library first: a loaded library calls the pool through a pointer that can be
    set. Returns the module and ``None``, or the module and why it keeps TVM's pool.
    """
    import tvm

    with tempfile.TemporaryDirectory(prefix="tvm_sparse_lib_") as tmp:
        if path is None:
            path = os.path.join(tmp, "code.so")
            executable.export_library(path)
            module = tvm.runtime.load_module(path)
        else:
            module = executable
        return module, install(path, config)


def configure(config: ThreadConfig) -> None:
    """Apply ``config`` to the launcher before a call (the launcher is shared by the models of
    a process; each call runs under its model's setting)."""
    _POOL.apply(config)


def pool_stats() -> dict[str, int]:
    """Launch counters of this process: parallel launches, launches run on the caller alone
    (nested, concurrent or one thread), tasks run by the caller and by workers, the caller's
    total wait for tasks that workers had started (``wait_ns``) and the launches in which
    that wait passed 100 us (``long_waits``: a worker lost its core mid-task)."""
    out = (ctypes.c_long * len(_STATS))()
    if _POOL.lib is not None:
        _POOL.lib.tsp_stats(out)
    return dict(zip(_STATS, (int(v) for v in out), strict=True))


_STATS = (
    "launches",
    "serial_launches",
    "caller_tasks",
    "worker_tasks",
    "wait_ns",
    "long_waits",
)
