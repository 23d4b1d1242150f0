"""ConvertComputeDtype: the structure it leaves, the names it keeps, and the numerics of the
converted graph, built for the CPU (llvm) with TVM's default pipeline and compared with PyTorch.

The CPU build checks the graph conversion (which ops run in fp16 or bf16, where the casts go),
not the CUDA kernels: on the GPU the same graph is scheduled by dlight
(``tests/schedules/gpu/test_cuda_compute_dtype.py``).

Tolerances are per dtype and scaled to the output's magnitude: ``atol = rtol = TOL[dtype] *
max|expected|``. Each activation rounded to fp16 is off by at most its unit roundoff,
2**-11 ~ 4.9e-4 of its value (bf16: 2**-8 ~ 3.9e-3), and matmuls and convs accumulate in fp32,
so a model of a few layers stays within a few units; 1e-2 for fp16 and 5e-2 for bf16 (about 20
and 13 units) leave room for that growth while a missing cast, an fp16 accumulation that
overflows or a mis-converted op is off by far more.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import tvm
import zoo
from cuda_testing import serial_thread_bindings
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

import tvm_sparse
from tvm_sparse.passes.convert_compute_dtype import ConvertComputeDtype
from tvm_sparse.pipeline import compute_dtype_passes, prepare_passes, sparsity_passes
from tvm_sparse.targets import get_preset

TOL = {"float16": 1e-2, "bfloat16": 5e-2}
CUDA = tvm.target.Target({"kind": "cuda", "arch": "sm_87"})
SM72 = tvm.target.Target({"kind": "cuda", "arch": "sm_72"})
#: The host CPU with its features: LLVM then converts fp16 with instructions (F16C on x86)
#: rather than library calls, whose code takes it several times longer to generate.
HOST = get_preset("x86").tvm_target()


@I.ir_module
class Before:
    @R.function
    def main(x: R.Tensor((4, 8), "float32"), w: R.Tensor((8, 16), "float32")):
        with R.dataflow():
            lv = R.matmul(x, w)
            lv1 = R.clip(lv, R.prim_value(0), R.prim_value(6))
            lv2 = R.nn.softmax(lv1)
            R.output(lv2)
        return lv2


@I.ir_module
class ExpectedFP16:
    @R.function
    def main(x: R.Tensor((4, 8), "float32"), w: R.Tensor((8, 16), "float32")):
        with R.dataflow():
            x_f16 = R.astype(x, "float16")
            w_f16 = R.astype(w, "float16")
            lv = R.matmul(x_f16, w_f16, out_dtype="float32")  # fp32 accumulators
            lv_f16 = R.astype(lv, "float16")
            const_f16 = R.astype(R.const(0.0, "float32"), "float16")
            lv1_lo = R.maximum(lv_f16, const_f16)  # clip, which ToMixedPrecision cannot take
            const_f16_1 = R.astype(R.const(6.0, "float32"), "float16")
            lv1 = R.minimum(lv1_lo, const_f16_1)
            lv1_f32 = R.astype(lv1, "float32")
            lv2 = R.nn.softmax(lv1_f32, axis=-1)  # stays fp32
            R.output(lv2)
        return lv2


def _names(mod: tvm.IRModule) -> list[str]:
    return [b.var.name for block in mod["main"].body.blocks for b in block.bindings]


def test_fp16_structure_and_names():
    after = ConvertComputeDtype("float16")(Before)
    tvm.ir.assert_structural_equal(after, ExpectedFP16)
    # structural equality ignores names; the report and the decisions key on them
    assert _names(after) == _names(ExpectedFP16)


def test_bf16_casts_are_bf16():
    after = ConvertComputeDtype("bfloat16")(Before)
    casts = [b.value for b in after["main"].body.blocks[0].bindings if "astype" in str(b.value)]
    assert sorted({str(c.attrs.dtype) for c in casts}) == ["bfloat16", "float32"]
    assert "x_bf16" in _names(after) and after["main"].ret_ty.dtype == "float32"


def test_module_without_dataflow_block_is_converted():
    @I.ir_module
    class NoDataflow:
        @R.function
        def main(x: R.Tensor((4, 8), "float32"), w: R.Tensor((8, 16), "float32")):
            lv = R.matmul(x, w)
            lv1 = R.nn.relu(lv)
            return lv1

    after = ConvertComputeDtype("float16")(NoDataflow)
    (matmul,) = [b.value for b in after["main"].body.blocks[0].bindings if b.var.name == "lv"]
    assert [a.ty.dtype for a in matmul.args] == ["float16", "float16"]
    assert after["main"].ret_ty.dtype == "float32"


def test_float32_and_bad_dtypes():
    assert ConvertComputeDtype("float32")(Before).same_as(Before)
    with pytest.raises(ValueError, match=r"dtype='half' is not valid: use float32, float16"):
        ConvertComputeDtype("half")


@functools.cache
def _converted(name: str, dtype: str) -> tuple[tvm.IRModule, np.ndarray, np.ndarray]:
    model, (x,) = zoo.make(name)
    with torch.no_grad():
        expected = model(x).numpy()
    mod = tvm_sparse.frontend.import_model(model, (x,)).mod
    mod = tvm.transform.Sequential(prepare_passes() + compute_dtype_passes(dtype))(mod)
    return mod, x.numpy(), expected


def _run_on_cpu(mod: tvm.IRModule, x: np.ndarray) -> np.ndarray:
    """Build with TVM's default llvm pipeline (the project's CPU schedules are fp32 only)."""
    out = relax.VirtualMachine(tvm.compile(mod, HOST), tvm.cpu())["main"](tvm.runtime.tensor(x))
    return (out if hasattr(out, "numpy") else out[0]).numpy()


def _check(actual: np.ndarray, expected: np.ndarray, dtype: str) -> None:
    tol = TOL[dtype] * float(np.abs(expected).max())
    assert actual.dtype == expected.dtype  # the boundary keeps the model's dtype
    np.testing.assert_allclose(actual, expected, rtol=TOL[dtype], atol=tol)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_converted_zoo_matches_pytorch_on_cpu(name, dtype):
    mod, x, expected = _converted(name, dtype)
    ops = {
        (str(b.value.op.name), str(b.var.ty.dtype))
        for b in mod["main"].body.blocks[0].bindings
        if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op)
    }
    # the conversion happened: matmuls or convs accumulate fp16 operands in fp32
    assert {("relax.matmul", "float32"), ("relax.nn.conv2d", "float32")} & ops
    assert any(d == dtype for _, d in ops), ops
    _check(_run_on_cpu(mod, x), expected, dtype)


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("mlp", {"pattern": "block", "block_shape": (16, 1), "sparsity": 0.8}),
        # attention's fp16 output feeds a sparse kernel: the conversion must cast it back
        ("transformer", {"pattern": "2:4"}),
    ],
)
def test_pruned_model_in_fp16_keeps_its_sparse_kernels_fp32(name, pattern):
    """The fp32 CUDA sparse kernels stay fp32 inside an fp16 graph, with casts at their edges;
    run on the CPU with their thread loops made serial (sm_72: no mma.sp kernel)."""
    model, (x,) = zoo.make(name)
    tvm_sparse.prune(model, (x,), **pattern)
    with torch.no_grad():
        expected = model(x).numpy()
    mod = tvm_sparse.frontend.import_model(model, (x,)).mod
    with SM72:
        passes = prepare_passes() + sparsity_passes(SM72, dtype="float16")
        mod = tvm.transform.Sequential(passes + compute_dtype_passes("float16"))(mod)
    kernels = {
        gv: func
        for gv, func in mod.functions_items()
        if isinstance(func, tvm.tirx.PrimFunc) and "tvm_sparse.knobs" in (func.attrs or {})
    }
    assert kernels, "no sparse kernel"
    calls = [
        b.value
        for b in mod["main"].body.blocks[0].bindings
        if isinstance(b.value, relax.Call) and b.value.op == tvm.ir.Op.get("relax.call_tir")
    ]
    for call in calls:  # fp32 in and out of every sparse kernel
        assert call.ty.dtype == "float32"
        floats = {str(a.ty.dtype) for a in call.args[1].fields if "float" in str(a.ty.dtype)}
        assert floats == {"float32"}, call
    decisions = mod["main"].attrs["tvm_sparse.decisions"]
    assert any("fp32 kernel in this float16 model" in str(d["reason"]) for d in decisions.values())
    for gv, func in kernels.items():
        mod[gv] = serial_thread_bindings(func)
    _check(_run_on_cpu(mod, x.numpy()), expected, "float16")
