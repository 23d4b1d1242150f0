"""What is wrong with a scheduled PrimFunc, checked before the build rather than during it.

A schedule rule can produce a function that schedules without error but cannot build: loops
left unbound on a GPU (they would run on the host and read device memory), more threads per
block or shared memory than the device has, or IR that is not well formed. TVM would reject
such a function late in the build, with the whole model's compile lost; checked here,
:class:`~tvm_sparse.schedules.ApplySchedules` hands the function to the next rule instead.
"""

from __future__ import annotations

import math

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.target import Target

from ..targets.backend import backend_of

__all__ = ["schedule_problem"]

_GPU_AXES = ("blockIdx.", "threadIdx.")


def schedule_problem(func: tirx.PrimFunc, target: Target) -> str | None:
    """Why ``func`` (a rule's scheduled function) would not build for ``target``, or ``None``.

    Checks, for every target, that the function is well formed
    (``tvm.s_tir.analysis.verify_well_formed``); for CUDA targets also that every block runs
    in a thread-bound loop, and that threads per block, shared memory and vector widths fit the
    target's limits (TVM's ``verify_gpu_code`` on the function lowered as MetaSchedule's
    ``VerifyGPUCode`` lowers it); for CPU targets that no loop is bound to GPU threads.
    """
    problem = _not_well_formed(func)
    if problem:
        return problem
    backend = backend_of(target, allow_none=True)
    bound = _thread_bound_loops(func)
    if backend is None or backend.family == "cpu":
        if bound:
            return f"loops bound to GPU threads ({', '.join(sorted(bound))}) on a CPU target"
        return None
    unbound = _unbound_blocks(func)
    if unbound:
        return f"blocks not bound to GPU threads (they would run on the host): {', '.join(unbound)}"
    limits = ", ".join(f"{k} {target.attrs[k]}" for k in _LIMITS if k in target.attrs)
    threads = _threads_per_block(func)
    if threads > int(target.attrs.get("max_threads_per_block", threads)):
        return f"exceeds the target's limits ({limits}): {threads} threads per block"
    try:
        fits = _fits_gpu(func, target)
    except _LoweringFailed as err:
        return f"does not lower: {err}"
    if not fits:
        return (
            f"exceeds the target's limits ({limits}; verify_gpu_code): {threads} threads per "
            f"block, shared buffers of {_shared_bytes(func)} bytes"
        )
    return None


_LIMITS = ("max_threads_per_block", "max_shared_memory_per_block")


def _threads_per_block(func: tirx.PrimFunc) -> int:
    """The most threads per block of the kernels in ``func`` (each kernel is an outermost
    thread-bound loop nest; its block has the product of its ``threadIdx`` extents)."""
    bindings: list[tirx.For] = []
    nested: list[tirx.For] = []

    def visit(loop: tirx.For) -> None:
        if loop.kind == tirx.ForKind.THREAD_BINDING:
            bindings.append(loop)
            tvm_ffi.structural_walk(
                loop.body,
                [(tirx.For, lambda inner: nested.append(inner))],
                order="post",
            )

    tvm_ffi.structural_walk(func.body, [(tirx.For, visit)], order="post")
    most = 1
    for root in bindings:
        if any(root.same_as(n) for n in nested):
            continue
        extents: dict[str, int] = {}
        for loop in [root, *(n for n in nested if _within(n, root))]:
            tag = _thread_tag(loop)
            if tag.startswith("threadIdx.") and isinstance(loop.extent, tirx.IntImm):
                extents[tag] = max(extents.get(tag, 1), int(loop.extent.value))
        most = max(most, math.prod(extents.values()))
    return most


def _within(loop: tirx.For, root: tirx.For) -> bool:
    found = []
    tvm_ffi.structural_walk(
        root.body, [(tirx.For, lambda inner: found.append(inner.same_as(loop)))], order="post"
    )
    return any(found)


def _thread_tag(loop: tirx.For) -> str:
    if loop.kind != tirx.ForKind.THREAD_BINDING or loop.thread_binding is None:
        return ""
    return str(loop.thread_binding.thread_tag)


def _not_well_formed(func: tirx.PrimFunc) -> str | None:
    if s_tir.analysis.verify_well_formed(func, assert_mode=False):
        return None
    try:
        s_tir.analysis.verify_well_formed(func, assert_mode=True)
    except Exception as err:  # noqa: BLE001 - TVM's error carries the reason as text
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        return "not well formed" + (f": {lines[-1][:200]}" if lines else "")
    return "not well formed"


def _thread_bound_loops(func: tirx.PrimFunc) -> dict[str, int]:
    """``{thread tag: largest extent}`` of the GPU-thread-bound loops in ``func``."""
    found: dict[str, int] = {}

    def visit(loop: tirx.For) -> None:
        if loop.kind == tirx.ForKind.THREAD_BINDING and loop.thread_binding is not None:
            tag = str(loop.thread_binding.thread_tag)
            if tag.startswith(_GPU_AXES):
                extent = loop.extent.value if isinstance(loop.extent, tirx.IntImm) else 0
                found[tag] = max(found.get(tag, 0), int(extent))

    tvm_ffi.structural_walk(func.body, [(tirx.For, visit)], order="post")
    return found


def _unbound_blocks(func: tirx.PrimFunc) -> list[str]:
    """Blocks neither inside a thread-bound loop nor launching threads themselves."""
    blocks: list[s_tir.SBlock] = []
    bound: set[str] = set()

    def under_binding(loop: tirx.For) -> None:
        if loop.kind == tirx.ForKind.THREAD_BINDING:
            walk = tvm_ffi.structural_walk
            walk(loop.body, [(s_tir.SBlock, lambda b: bound.add(b.name_hint))], order="post")

    tvm_ffi.structural_walk(
        func.body,
        [(s_tir.SBlock, blocks.append), (tirx.For, under_binding)],
        order="post",
    )
    return [
        b.name_hint
        for b in blocks
        if b.name_hint != "root" and b.name_hint not in bound and not _thread_bound_loops_in(b)
    ]


def _thread_bound_loops_in(block: s_tir.SBlock) -> bool:
    found = []
    tvm_ffi.structural_walk(
        block.body,
        [(tirx.For, lambda loop: found.append(loop.kind == tirx.ForKind.THREAD_BINDING))],
        order="post",
    )
    return any(found)


def _shared_bytes(func: tirx.PrimFunc) -> int:
    """Bytes of the shared-memory buffers the function's blocks allocate."""
    sizes: list[int] = []

    def visit(block: s_tir.SBlock) -> None:
        for buf in block.alloc_buffers:
            if buf.scope().startswith("shared"):
                dims = [d.value if isinstance(d, tirx.IntImm) else 0 for d in buf.shape]
                elements = math.prod(dims)
                sizes.append(elements * tvm_ffi.dtype(buf.dtype).bits // 8)

    tvm_ffi.structural_walk(func.body, [(s_tir.SBlock, visit)], order="post")
    return sum(sizes)


def _fits_gpu(func: tirx.PrimFunc, target: Target) -> bool:
    """``func`` lowered as MetaSchedule's ``VerifyGPUCode`` lowers it (shared buffers compacted
    to what a block uses, blocks made loops), then checked against the target's threads per
    block, shared memory per block and vector width by TVM's ``verify_gpu_code``.

    The postprocessor itself needs a ``TuneContext``, whose first construction registers every
    tensor intrinsic (a minute here), so the same passes are run directly.
    """
    mod = tvm.IRModule({"main": func})
    try:
        mod = tvm.transform.Sequential(_LOWER_FOR_VERIFY())(mod)
    except Exception as err:  # noqa: BLE001 - what the build's lowering would stop at
        raise _LoweringFailed(str(err).strip().splitlines()[-1][:200]) from None
    constraints = {
        "max_shared_memory_per_block": int(target.attrs.get("max_shared_memory_per_block", 0)),
        "max_threads_per_block": int(target.attrs.get("max_threads_per_block", 0)),
        "max_thread_x": int(target.attrs.get("max_threads_per_block", 0)),
        "max_thread_y": int(target.attrs.get("max_threads_per_block", 0)),
        "max_thread_z": 64,
        "max_vector_bytes": 16,
    }
    constraints = {k: v for k, v in constraints.items() if v}
    return bool(s_tir.analysis.verify_gpu_code(mod["main"], constraints))


class _LoweringFailed(Exception):
    """The scheduled function does not lower (the build would stop there)."""


def _LOWER_FOR_VERIFY() -> list[tvm.transform.Pass]:  # noqa: N802 - a constant, built late
    st, tx = s_tir.transform, tirx.transform
    return [
        st.LowerCrossThreadReduction(),
        st.LowerInitBlock(),
        st.PlanAndUpdateBufferAllocationLocation(),
        st.ConvertBlocksToOpaque(),
        st.ManifestSharedMemoryLocalStage(),
        st.CompactBufferAllocation(),
        st.LowerMatchBuffer(),
        st.InjectSoftwarePipeline(),
        st.LowerOpaqueBlock(),
        tx.FlattenBuffer(),
        tx.NarrowDataType(32),
        tx.StmtSimplify(),
        tx.VectorizeLoop(True),
        st.InjectVirtualThread(),
        tx.StorageRewrite(),
        tx.StmtSimplify(),
    ]
