"""Kernel builders parse their TVMScript once per distinct arguments."""

from __future__ import annotations

from tvm_sparse.kernels.bsr_matmul import BSRMatmulKnobs, bsr_matmul
from tvm_sparse.kernels.kernel_cache import cached_kernel
from tvm_sparse.kernels.nm_matmul import NMMatmulKnobs, nm_matmul


def test_same_arguments_build_once():
    calls = []

    @cached_kernel
    def builder(m, block, *, knobs=None):
        calls.append((m, block))
        return object()

    first = builder(4, (16, 1), knobs=NMMatmulKnobs())
    assert builder(4, (16, 1), knobs=NMMatmulKnobs()) is first
    assert builder(8, (16, 1), knobs=NMMatmulKnobs()) is not first
    assert calls == [(4, (16, 1)), (8, (16, 1))]


def test_unhashable_arguments_build_anew():
    calls = []

    @cached_kernel
    def builder(block):
        calls.append(block)
        return len(block)

    assert builder([16, 1]) == 2 and builder([16, 1]) == 2
    assert len(calls) == 2


def test_kernels_of_equal_arguments_are_one_function():
    knobs = BSRMatmulKnobs(lanes=8)
    a = bsr_matmul(64, 32, 48, (1, 1), 100, 48, knobs=knobs)
    assert bsr_matmul(64, 32, 48, (1, 1), 100, 48, knobs=BSRMatmulKnobs(lanes=8)) is a
    assert bsr_matmul(64, 32, 48, (1, 1), 101, 48, knobs=knobs) is not a
    nm = NMMatmulKnobs(lanes=8)
    first = nm_matmul(16, 32, 32, (2, 4), 32, knobs=nm)
    assert nm_matmul(16, 32, 32, (2, 4), 32, knobs=nm) is first
