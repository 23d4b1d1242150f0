"""Testing CUDA code without a GPU: CUDA toolchains, and kernels run on the CPU.

:func:`serial_thread_bindings` turns a CUDA kernel's thread-bound loops serial, so that its TIR
builds for llvm and its index logic can be checked against NumPy here.

``nvcc`` compiles the CUDA C that TVM keeps in a built module, for the architectures it knows.
CUDA 13 dropped Volta, so for ``sm_72`` (Jetson Xavier) the tests build the same TIR with TVM's
LLVM NVPTX backend and assemble the PTX with the ``ptxas`` of the ``nvidia-cuda-nvcc-cu12``
wheel (CUDA 12.6, in the ``test`` extra), which still targets ``sm_72``.

TVM 0.27.0.post1's NVPTX codegen does not work as shipped with its LLVM 22; :func:`nvptx_build`
and :func:`device_ptx` apply four workarounds, each for a build check only:

1. ``tvm_storage_sync`` (``__syncthreads``) becomes ``llvm.nvvm.barrier.cta.sync.aligned.all``
   without its ``i32`` barrier operand, which fails LLVM verification; it is lowered here to
   that intrinsic with barrier 0 (``bar.sync 0``, what ``__syncthreads`` is).
2. ``fma`` becomes libdevice's scalar ``__nv_fmaf`` also for vector lanes, which fails
   verification (or leaves an unresolved call); it is lowered here to the overloaded
   ``llvm.fma``.
3. Kernels come out as ``.func``: LLVM 22 wants the ``ptx_kernel`` calling convention, TVM
   still writes the dropped ``nvvm.annotations``. The PTX text is patched to ``.entry``.
4. libdevice is looked up next to ``nvcc``, which a split toolkit lacks; the wheel's is used.

So an ``nvptx`` module from this TVM would not load on a device: the check is that the kernels
lower, fit the architecture's registers and shared memory, and assemble. The lowering overrides
of 1 and 2 are process-wide (TVM cannot unregister an op attribute) and touch only the
``nvptx`` target, which nothing else in the test suite builds for.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tvm
import tvm_ffi
from tvm import tirx

from tvm_sparse.targets.cuda_resources import (
    KernelResources,
    nvcc_arches,  # noqa: F401  (the tests import it from here)
    nvcc_resources,
    ptxas_resources,
)

SM87 = tvm.target.Target({"kind": "cuda", "arch": "sm_87"})


@functools.cache
def cuda12_root() -> Path | None:
    """The ``nvidia/cuda_nvcc`` directory of the ``nvidia-cuda-nvcc-cu12`` wheel, if installed
    with its ``ptxas`` and libdevice."""
    spec = importlib.util.find_spec("nvidia.cuda_nvcc")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    if not (root / "bin" / "ptxas").is_file() or not _libdevice(root):
        return None
    return root


def _libdevice(root: Path) -> Path | None:
    found = sorted((root / "nvvm" / "libdevice").glob("libdevice*.bc"))
    return found[0] if found else None


def skip_reason_sm72() -> str | None:
    """Why the ``sm_72`` check cannot run here, or ``None`` when it can."""
    if cuda12_root() is None:
        return (
            "no ptxas for sm_72: CUDA 13 dropped Volta; install the CUDA 12 ptxas with "
            "`pip install nvidia-cuda-nvcc-cu12==12.6.*` (in the `test` extra)"
        )
    return None


def _barrier(call: tirx.Call) -> tirx.PrimExpr:
    return tirx.call_llvm_intrin(
        "void", "llvm.nvvm.barrier.cta.sync.aligned.all", tirx.const(0, "int32")
    )


def _fma(call: tirx.Call) -> tirx.PrimExpr:
    return tirx.call_llvm_pure_intrin(call.ty, "llvm.fma", *call.args)


@functools.cache
def _register_lowering_fixes() -> None:
    tirx.op.register_intrin_lowering("tirx.tvm_storage_sync", target="nvptx", f=_barrier, level=99)
    tirx.op.register_intrin_lowering("tirx.fma", target="nvptx", f=_fma, level=99)


@contextlib.contextmanager
def nvptx_build() -> Iterator[None]:
    """Within: TVM builds for ``nvptx`` (workarounds 1, 2 and 4 of the module docstring)."""
    root = cuda12_root()
    assert root is not None, skip_reason_sm72()
    _register_lowering_fixes()
    key = "tvm_callback_libdevice_path"
    previous = tvm_ffi.get_global_func(key, allow_missing=True)
    libdevice = str(_libdevice(root))
    tvm_ffi.register_global_func(key, lambda _arch: libdevice, override=True)
    try:
        yield
    finally:
        if previous is not None:
            tvm_ffi.register_global_func(key, previous, override=True)


def nvptx_target(arch: str, host: tvm.target.Target | None = None) -> tvm.target.Target:
    return tvm.target.Target({"kind": "nvptx", "mcpu": arch}, host=host or "llvm")


def device_ptx(module: tvm.runtime.Module, threads: dict[str, int] | None = None) -> str:
    """The PTX of the device module imported by a module built for ``nvptx``, kernels made
    ``.entry`` (workaround 3).

    The block sizes went with the dropped ``nvvm.annotations`` too: ``threads`` (``{kernel:
    threads per block}``, the ``__launch_bounds__`` of the same TIR built as CUDA C) puts them
    back as ``.maxntid``, so that ptxas allocates registers for the block size the kernel has.
    """
    found = [module] if module.kind == "cuda" else []
    stack = list(module.imports)
    while stack and not found:
        mod = stack.pop()
        if mod.kind == "cuda":
            found.append(mod)
        stack.extend(mod.imports)
    assert found, "no device module"
    ptx = found[0].inspect_source("")
    ptx = re.sub(r"^\.visible \.func (\w+_kernel\w*)\(", r".visible .entry \1(", ptx, flags=re.M)
    for name, count in (threads or {}).items():
        entry = rf"(^\.visible \.entry {name}\([^)]*\))"
        ptx = re.sub(entry, rf"\1\n.maxntid {count}, 1, 1", ptx, flags=re.M)
    return ptx


def ptxas(ptx: str, arch: str, tmp_path: Path) -> dict[str, dict[str, int]]:
    """Assemble ``ptx`` for ``arch`` with the wheel's ``ptxas -v``; per kernel its registers,
    spill bytes (stores and loads), static shared memory and threads per block."""
    assert cuda12_root() is not None, skip_reason_sm72()
    return _as_dicts(ptxas_resources(ptx, arch, tmp_path))


def nvcc(source: str, arch: str, tmp_path: Path) -> dict[str, dict[str, int]]:
    """Compile CUDA C for ``arch`` with ``nvcc -cubin``; per kernel as :func:`ptxas`."""
    return _as_dicts(nvcc_resources(source, arch, tmp_path))


def _as_dicts(resources: dict[str, KernelResources]) -> dict[str, dict[str, int]]:
    return {
        name: {
            "registers": r.registers,
            "spill_bytes": r.spill_stores + r.spill_loads,
            "smem_bytes": r.smem_bytes,
            "threads": r.threads,
        }
        for name, r in resources.items()
    }


# -- kernels -------------------------------------------------------------------------------

_BINDING = re.compile(r'T\.thread_binding\((\d+|T\.int64\(\d+\)), thread="[\w.]+"\)')


def serial_thread_bindings(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with every ``T.thread_binding`` loop made a serial loop, buildable for llvm.

    The CUDA kernels keep each phase (stage the tile, multiply, store) in its own thread-bound
    loops, so running each phase's thread loops one after the other computes what the CTA does;
    per-thread buffers keep their full ``(threads_n, threads_m, ...)`` shape on the CPU. TVM
    0.27 has no Python statement mutator, hence the round trip through TVMScript.
    """
    text, count = _BINDING.subn(r"T.serial(\1)", func.script())
    assert count and "thread_binding" not in text, "no (or unrecognised) thread bindings"
    return tvm.script.from_source(text)


def run_on_cpu(func: tirx.PrimFunc, *args: np.ndarray) -> np.ndarray:
    """Build ``serial_thread_bindings(func)`` for llvm, call it, return the last argument."""
    mod = tvm.IRModule({"main": serial_thread_bindings(func).with_attr("global_symbol", "main")})
    lib = tvm.compile(mod, "llvm")
    tensors = [tvm.runtime.tensor(a) for a in args]
    lib["main"](*tensors)
    return tensors[-1].numpy()


def build(func: tirx.PrimFunc, target: tvm.target.Target = SM87) -> tvm.runtime.Module:
    """``func`` alone, built for ``target``."""
    return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target)


def cuda_source(func: tirx.PrimFunc, target: tvm.target.Target = SM87) -> str:
    """The CUDA C TVM generates for ``func``."""
    (device,) = [m for m in build(func, target).mod.imports if m.kind == "cuda"]
    return device.inspect_source("")


def run_on_gpu(func: tirx.PrimFunc, *args: np.ndarray) -> np.ndarray:
    """Build ``func`` for this machine's GPU, call it, return the last argument."""
    dev = tvm.cuda(0)
    lib = build(func, tvm.target.Target.from_device(dev))
    tensors = [tvm.runtime.tensor(a, device=dev) for a in args]
    lib["main"](*tensors)
    return tensors[-1].numpy()
