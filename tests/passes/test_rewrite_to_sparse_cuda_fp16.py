"""RewriteToSparse on an fp16 matmul with a constant 2:4 weight: the mma.sp kernel on sm_80+
(with its report reason), dense on sm_72, and the rewritten module's numerics on the CPU (the
kernel's thread loops serial, the NumPy model of mma.sp in place of the instruction)."""

import numpy as np
import pytest
import tvm
from cuda_testing import serial_thread_bindings
from mma_sp_emulator import two_four
from tvm import relax

import tvm_sparse
from tvm_sparse.kernels.gpu import MMASpKnobs, cuda_mma_sp_matmul
from tvm_sparse.passes.detect_sparsity import DetectSparsity
from tvm_sparse.passes.rewrite_to_sparse import DECISIONS_ATTR, RewriteToSparse

SM87 = {"kind": "cuda", "arch": "sm_87"}
SM72 = {"kind": "cuda", "arch": "sm_72"}
WEIGHT = two_four(48, 64, np.random.default_rng(0))


def _module(weight: np.ndarray) -> tvm.IRModule:
    """``relu(x @ weight.T)`` for ``x`` ``(2, 3, K)`` of the weight's dtype."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 3, weight.shape[1]), str(weight.dtype)))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, relax.op.permute_dims(relax.const(weight))))
            out = bb.emit_output(relax.op.nn.relu(y))
        bb.emit_func_output(out)
    return bb.get()


def _rewrite(mod, target, sparsity="auto", dtype="float32"):
    mod = DetectSparsity()(relax.transform.FoldConstant()(mod))
    return RewriteToSparse(target, sparsity=sparsity, dtype=dtype)(mod)


def _decision(mod):
    (record,) = mod["main"].attrs[DECISIONS_ATTR].values()
    return {str(k): str(v) for k, v in record.items()}


def _kernels(mod):
    return [
        str(f.attrs["tvm_sparse.kernel"])
        for f in mod.functions.values()
        if isinstance(f, tvm.tirx.PrimFunc) and f.attrs and "tvm_sparse.kernel" in f.attrs
    ]


def test_fp16_two_four_matmul_runs_mma_sp_on_sm87():
    mod = _rewrite(_module(WEIGHT), SM87)
    assert _kernels(mod) == ["mma_sp_matmul[2:4]"]
    decision = _decision(mod)
    assert decision["kernel"] == "mma_sp_matmul[2:4]" and decision["pattern"] == "2:4"
    assert "sm_87 has sparse tensor cores: mma.sp kernel" in decision["reason"]


def _run_emulated(mod: tvm.IRModule, x: np.ndarray, out_dtype: str, mkn=(6, 64, 48)) -> np.ndarray:
    """``mod`` on the CPU, its ``mma.sp`` kernel (``m x k`` by ``k x n``) serial and emulated."""
    mod = mod.clone()
    for gv, func in list(mod.functions_items()):
        if isinstance(func, tvm.tirx.PrimFunc) and "tvm_sparse.knobs" in (func.attrs or {}):
            knobs = {k: int(v) for k, v in func.attrs["tvm_sparse.knobs"].items() if k != "device"}
            emulated = cuda_mma_sp_matmul(
                *mkn, knobs=MMASpKnobs(**knobs), out_dtype=out_dtype, mma="emulated"
            )
            mod[gv] = serial_thread_bindings(emulated.with_attrs(func.attrs))
    exe = tvm.compile(mod, "llvm", relax_pipeline=tvm_sparse.pipeline("x86", sparsity="off"))
    return relax.VirtualMachine(exe, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def test_fp16_rewrite_computes_the_dense_matmul():
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 64)).astype("float16")
    out = _run_emulated(_rewrite(_module(WEIGHT), SM87), x, "float16")
    ref = np.maximum(x.astype("f8") @ WEIGHT.astype("f8").T, 0)
    assert out.dtype == np.float16 and out.shape == (2, 3, 48)
    np.testing.assert_allclose(out, ref, rtol=2e-3, atol=2e-2)


def test_fp32_model_compiled_in_fp16_casts_into_the_mma_sp_kernel():
    """``compile(dtype="float16")`` rewrites before the model is converted: the kernel takes
    the fp32 activations cast to fp16 and returns fp32 in place of the fp32 matmul."""
    mod = _rewrite(_module(WEIGHT.astype("float32")), SM87, dtype="float16")
    assert _kernels(mod) == ["mma_sp_matmul[2:4]"]
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 64)).astype("float32")
    out = _run_emulated(mod, x, "float32")
    ref = np.maximum(x.astype("f2").astype("f8") @ WEIGHT.astype("f8").T, 0)
    assert out.dtype == np.float32 and out.shape == (2, 3, 48)
    np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-3)


def test_fp16_stays_dense_without_sparse_tensor_cores():
    mod = _rewrite(_module(WEIGHT), SM72)
    assert _kernels(mod) == []
    decision = _decision(mod)
    assert decision["kernel"] == "dense"
    assert "sm_72 has none" in decision["reason"]


def test_fp32_two_four_matmul_keeps_the_cuda_core_kernel_on_sm87():
    mod = _rewrite(_module(WEIGHT.astype("float32")), SM87)
    assert _kernels(mod) == ["nm_matmul[2:4]"]


def _pointwise_conv(weight: np.ndarray) -> tvm.IRModule:
    """``relu(conv2d(x, weight))``, 1x1, NCHW, fp32, ``x`` ``(2, K, 3, 5)``."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, weight.shape[1], 3, 5), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(weight[:, :, None, None])))
            out = bb.emit_output(relax.op.nn.relu(y))
        bb.emit_func_output(out)
    return bb.get()


def test_pointwise_conv_in_an_fp16_model_runs_mma_sp_over_its_pixels():
    weight = WEIGHT.astype("float32")
    mod = _rewrite(_pointwise_conv(weight), SM87, dtype="float16")
    assert _kernels(mod) == ["mma_sp_matmul[2:4]"]
    assert "sparse tensor cores" in _decision(mod)["reason"]
    x = np.random.default_rng(2).uniform(-1, 1, (2, 64, 3, 5)).astype("float32")
    out = _run_emulated(mod, x, "float32", mkn=(30, 64, 48))
    xf = x.astype("f2").astype("f8")
    ref = np.maximum(np.einsum("oc,nchw->nohw", weight.astype("f8"), xf), 0)
    assert out.shape == (2, 48, 3, 5)
    np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-3)


def test_fp16_model_without_sparse_tensor_cores_keeps_the_fp32_kernel():
    mod = _rewrite(_module(WEIGHT.astype("float32")), SM72, dtype="float16")
    assert _kernels(mod) == ["nm_matmul[2:4]"]
    assert "fp32 kernel in this float16 model" in _decision(mod)["reason"]


@pytest.mark.parametrize(
    "choice, why",
    [("dense", "dense requested"), ("bsr:16x1", "fp16 runs only the 2:4"), ("nm:4:8", "4:8")],
)
def test_fp16_config_choices(choice, why):
    (name,) = _rewrite(_module(WEIGHT), SM87)["main"].attrs[DECISIONS_ATTR]
    decision = _decision(_rewrite(_module(WEIGHT), SM87, {str(name): choice}))
    assert decision["kernel"] == "dense" and why in decision["reason"]


def test_fp16_weight_that_is_not_two_four_stays_dense():
    weight = WEIGHT.copy()
    weight[0, :4] = 1
    decision = _decision(_rewrite(_module(weight), SM87))
    assert decision["kernel"] == "dense" and "not 2:4" in decision["reason"]
