"""Static throughput: hot loops are found in real cross-compiled kernels, counted right, and
llvm-mca's predictions stay within each core's peak."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

import tvm_sparse
from tvm_sparse.measure import block_mask
from tvm_sparse.pipeline import pipeline
from tvm_sparse.static_throughput import (
    _functions,
    _innermost_loops,
    assembly,
    find_llvm_mca,
    flops_per_iteration,
    kernel_throughput,
    predicted_table,
)
from tvm_sparse.targets import get_preset

needs_mca = pytest.mark.skipif(find_llvm_mca() is None, reason="llvm-mca is not installed")

AARCH64 = """
    .type kernel_compute_,@function
kernel_compute_:
    mov x3, #64
.LBB0_1:                                // outer
    ldr q0, [x1], #16
.LBB0_2:                                // inner
    ld1r { v1.4s }, [x2], #4
    fmla v2.4s, v0.4s, v1.4s
    fmla v3.4s, v0.4s, v1.s[1]
    fmul s4, s4, s5
    subs x4, x4, #1
    b.ne .LBB0_2
    subs x3, x3, #1
    b.ne .LBB0_1
    ret
.Lfunc_end0:
    .size kernel_compute_, .Lfunc_end0-kernel_compute_
"""

X86 = """
    .type kernel_compute_,@function
kernel_compute_:
.LBB0_1:                                # inner
    vbroadcastss (%rsi), %zmm1
    vfmadd231ps (%rdi), %zmm1, %zmm2
    vfmadd231ps 64(%rdi), %zmm1, %zmm3    # two FMAs of 16 lanes
    vfmadd231ss %xmm4, %xmm5, %xmm6
    vaddps %ymm1, %ymm2, %ymm3
    decq %rax
    jne .LBB0_1
    retq
.Lfunc_end0:
    .size kernel_compute_, .Lfunc_end0-kernel_compute_
"""


def test_innermost_loops_and_their_flops_are_read_from_assembly():
    (loop,) = _innermost_loops(_functions(AARCH64, "aarch64")["kernel_compute_"])
    assert loop[0].startswith("ld1r") and loop[-1] == "b.ne .LBB0_2"
    assert flops_per_iteration(loop) == 2 * 4 + 2 * 4 + 1
    (loop,) = _innermost_loops(_functions(X86, "x86_64")["kernel_compute_"])
    assert flops_per_iteration(loop) == 2 * 16 + 2 * 16 + 2 + 8


def _build(preset_name: str, weight: np.ndarray, sparsity):
    preset = get_preset(preset_name)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([64, weight.shape[1]], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(x, relax.const(weight.T.copy())))
        bb.emit_func_output(out)
    passes = pipeline(preset, sparsity=sparsity, tuning_cache=None)
    return tvm.compile(bb.get(), preset.tvm_target(), relax_pipeline=passes), preset.tvm_target()


@needs_mca
@pytest.mark.parametrize("preset", ["arm-cortex-a72", "arm-cortex-a76"])
@pytest.mark.parametrize("kind", ["dense", "bsr:16x1"])
def test_cross_compiled_kernels_are_predicted_within_the_core_peak(preset, kind):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((256, 256)).astype("float32")
    if kind != "dense":
        weight *= block_mask(256, 256, (16, 1), 0.1, rng)
    exe, target = _build(preset, weight, "off" if kind == "dense" else {"*": kind})
    kernels = kernel_throughput(assembly(exe), target)
    hot = max(kernels.values(), key=lambda k: k.flops)
    assert ("bsr_matmul" in hot.kernel) == (kind != "dense")
    assert hot.flops >= 8 and hot.cycles > 0  # at least one 4-lane multiply-add per iteration
    assert 0.05 < hot.share_of_peak <= 1.01  # the steady state over 200 iterations rounds
    assert 0 < hot.gflops <= hot.peak * hot.ghz + 1e-6


@needs_mca
def test_report_of_an_arm_compile_predicts_each_kernel():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.ReLU()).eval()
    compiled = tvm_sparse.compile(
        model, "arm-cortex-a76", example_inputs=(torch.randn(16, 128),), verify_speed=False
    )
    table = predicted_table(compiled)
    assert "neoverse-n1" in table and "predicted ms" in table
    row = next(line for line in table.splitlines() if "matmul" in line)
    mflop = float(row.split("|")[2])
    assert mflop == pytest.approx(2 * 16 * 128 * 256 / 1e6, rel=0.05)
