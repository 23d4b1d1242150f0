"""RewriteToSparse for CUDA targets: the uncalibrated GPU rule, the CUDA kernels in the IR, the
numerics of the rewritten module (its kernels run on the CPU with serial thread loops, and on a
GPU where there is one) and the compile report of a Jetson build."""

import numpy as np
import pytest
import torch
import tvm
import zoo
from cuda_testing import serial_thread_bindings
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

import tvm_sparse
from tvm_sparse.kernels import to_bsr
from tvm_sparse.kernels.gpu import CUDATileKnobs, cuda_bsr_matmul
from tvm_sparse.measure import block_mask, nm_mask
from tvm_sparse.passes.detect_sparsity import DetectSparsity
from tvm_sparse.passes.rewrite_to_sparse import DECISIONS_ATTR, RewriteToSparse
from tvm_sparse.pipeline import prepare_passes, sparsity_passes

TARGET = tvm.target.Target({"kind": "cuda", "arch": "sm_87"})
RULE = "uncalibrated GPU rule"
TOL = {"atol": 1e-4, "rtol": 1e-4}


def _rewrite(mod, sparsity="auto"):
    mod = DetectSparsity()(relax.transform.FoldConstant()(mod))
    return RewriteToSparse(TARGET, sparsity=sparsity)(mod)


def _linear_module(weight: np.ndarray, x_shape) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, relax.op.permute_dims(relax.const(weight))))
            out = bb.emit_output(relax.op.nn.relu(y))
        bb.emit_func_output(out)
    return bb.get()


def _conv_module(weight: np.ndarray, x_shape, **conv) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.conv2d(x, relax.const(weight), **conv))
        bb.emit_func_output(out)
    return bb.get()


def _decisions(mod: tvm.IRModule) -> dict:
    return {
        str(k): {str(a): str(b) for a, b in v.items()}
        for k, v in mod["main"].attrs[DECISIONS_ATTR].items()
    }


def _kernels(mod: tvm.IRModule) -> list[str]:
    return sorted(
        str(f.attrs["tvm_sparse.kernel"])
        for f in mod.functions.values()
        if isinstance(f, tvm.tirx.PrimFunc) and f.attrs and "tvm_sparse.kernel" in f.attrs
    )


def _run_on_cpu(mod: tvm.IRModule, *inputs: np.ndarray) -> np.ndarray:
    """Run a module rewritten for CUDA on the CPU: the CUDA kernels with serial thread loops,
    everything else through the x86 pipeline."""
    mod = mod.clone()
    for gv, func in list(mod.functions_items()):
        if isinstance(func, tvm.tirx.PrimFunc) and "tvm_sparse.knobs" in (func.attrs or {}):
            assert func.attrs["tvm_sparse.knobs"]["device"] == "cuda"
            mod[gv] = serial_thread_bindings(func)
    exe = tvm.compile(mod, "llvm", relax_pipeline=tvm_sparse.pipeline("x86", sparsity="off"))
    out = relax.VirtualMachine(exe, tvm.cpu())["main"](*[tvm.runtime.tensor(a) for a in inputs])
    return (out if hasattr(out, "numpy") else out[0]).numpy()


# --- structure: Before / Expected -----------------------------------------------------------


def test_rewrite_matmul_structure():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((16, 8), "float32"), w: R.Tensor((8, 32), "float32")):
            with R.dataflow():
                lv = R.matmul(x, w)
                R.output(lv)
            return lv

    @I.ir_module
    class Expected:
        @T.prim_func(private=True)
        def bsr_matmul_16x1(
            x: T.Buffer((1, 16, 8), "float32"),
            data: T.Buffer((1, 16, 1), "float32"),
            indices: T.Buffer((1,), "int32"),
            indptr: T.Buffer((3,), "int32"),
            y: T.Buffer((1, 16, 32), "float32"),
        ):
            T.evaluate(0)  # replaced by the generated kernel below

        @R.function
        def main(
            x: R.Tensor((16, 8), "float32"),
            data: R.Tensor((1, 16, 1), "float32"),
            indices: R.Tensor((1,), "int32"),
            indptr: R.Tensor((3,), "int32"),
        ):
            cls = Expected
            with R.dataflow():
                lv_x3d = R.reshape(x, (1, 16, 8))
                lv_sparse = R.call_tir(
                    cls.bsr_matmul_16x1,
                    (lv_x3d, data, indices, indptr),
                    out_ty=R.Tensor((1, 16, 32), "float32"),
                )
                lv = R.reshape(lv_sparse, (16, 32))
                R.output(lv)
            return lv

    weight = np.zeros((32, 8), "float32")
    weight[:16, 3] = np.arange(1, 17)  # one 16x1 block: block density 1/16
    before = relax.transform.BindParams("main", {"w": weight.T.copy()})(Before)
    after = _rewrite(before)

    bsr = to_bsr(weight, (16, 1))
    kernel = cuda_bsr_matmul(16, 8, 32, (16, 1), bsr.nnzb, bsr.block_rows, knobs=CUDATileKnobs())
    kernel = kernel.with_attr("tvm_sparse.flops", 2 * 16 * bsr.data.size)
    expected = Expected.clone()
    expected.update_func(expected.get_global_var("bsr_matmul_16x1"), kernel)
    expected = relax.transform.BindParams(
        "main", {"data": bsr.data, "indices": bsr.indices, "indptr": bsr.indptr}
    )(expected)

    after_main = after["main"].without_attr(DECISIONS_ATTR).without_attr("tvm_sparse.weights")
    after = after.clone()
    after.update_func(after.get_global_var("main"), after_main)
    tvm.ir.assert_structural_equal(after, expected, map_free_vars=True)
    decision = _decisions(_rewrite(before))["lv"]
    assert decision["kernel"] == "bsr_matmul[16x1]" and decision["pattern"] == "block 16x1"
    assert decision["reason"].startswith(f"{RULE}: block density 0.06 in 16x1 blocks")


def test_dense_weight_is_unchanged():
    weight = np.random.default_rng(0).standard_normal((32, 16)).astype("float32")
    before = DetectSparsity()(relax.transform.FoldConstant()(_linear_module(weight, (4, 16))))
    after = RewriteToSparse(TARGET)(before)
    tvm.ir.assert_structural_equal(after["main"].without_attr(DECISIONS_ATTR), before["main"])
    (decision,) = _decisions(after).values()
    assert decision["kernel"] == "dense" and decision["reason"].startswith(RULE)
    assert decision["reason"].endswith(": dense") and _kernels(after) == []


# --- the rule ----------------------------------------------------------------------------------


def _weight(pattern, n=64, k=64, density=0.1, seed=0):
    rng = np.random.default_rng(seed)
    if isinstance(pattern, str):  # "n:m"
        mask = nm_mask(n, k, tuple(int(v) for v in pattern.split(":")), rng)
    elif pattern is None:
        mask = rng.random((n, k)) < density
    else:
        mask = block_mask(n, k, pattern, density, rng)
    return (rng.standard_normal((n, k)) * mask).astype("float32")


@pytest.mark.parametrize(
    "pattern, density, kernel, says",
    [
        ((16, 1), 0.1, "bsr_matmul[16x1]", "<= 0.3): BSR kernel"),
        ((32, 1), 0.2, "bsr_matmul[32x1]", "<= 0.3): BSR kernel"),
        ((8, 1), 0.25, "bsr_matmul[8x1]", "<= 0.3): BSR kernel"),
        ((16, 1), 0.5, "dense", "(BSR needs <= 0.3), not 2:4 or 4:8: dense"),
        ((1, 4), 0.3, "dense", "not 2:4 or 4:8: dense"),  # short blocks: no 8-row cover
        (None, 0.6, "dense", "not 2:4 or 4:8: dense"),  # unstructured
        (None, 0.1, "nm_matmul[4:8]", "conforms to 4:8"),  # sparse enough to be 4:8 too
        ("2:4", 0.5, "nm_matmul[2:4]", "conforms to 2:4: compressed N:M kernel"),
        ("4:8", 0.5, "nm_matmul[4:8]", "conforms to 4:8: compressed N:M kernel"),
    ],
)
def test_rule_per_pattern(pattern, density, kernel, says):
    after = _rewrite(_linear_module(_weight(pattern, density=density), (8, 64)))
    (decision,) = _decisions(after).values()
    assert decision["kernel"] == kernel, decision
    assert decision["reason"].startswith(f"{RULE}: ") and says in decision["reason"]
    assert _kernels(after) == ([] if kernel == "dense" else [kernel])


def test_config_choices_are_honoured():
    weight = _weight((16, 1), density=0.5)  # the rule keeps it dense
    mod = _linear_module(weight, (8, 64))
    (name,) = DetectSparsity()(relax.transform.FoldConstant()(mod))["main"].attrs[
        "tvm_sparse.weights"
    ]
    forced = _rewrite(mod, sparsity={name: "bsr:16x1"})
    assert _kernels(forced) == ["bsr_matmul[16x1]"]
    assert _decisions(forced)[name]["reason"].startswith(f"{RULE}: block 16x1 requested")
    assert _kernels(_rewrite(mod, sparsity={name: "unstructured"})) == ["bsr_matmul[1x1]"]
    dense = _decisions(_rewrite(_linear_module(_weight((16, 1)), (8, 64)), sparsity="off"))
    assert all(d["kernel"] == "dense" and "requested" in d["reason"] for d in dense.values())
    not_nm = _decisions(_rewrite(mod, sparsity={name: "nm:2:4"}))[name]
    assert not_nm["kernel"] == "dense" and "not (2, 4) sparse" in not_nm["reason"]


def test_conv2d_pointwise_goes_sparse_larger_kernels_stay_dense():
    rng = np.random.default_rng(1)
    w1 = (rng.standard_normal((64, 32)) * block_mask(64, 32, (16, 1), 0.1, rng)).astype("float32")
    after = _rewrite(_conv_module(w1[:, :, None, None], (2, 32, 6, 6)))
    (decision,) = _decisions(after).values()
    assert decision["kernel"] == "bsr_matmul[16x1]" and decision["reason"].startswith(RULE)
    w3 = np.repeat(w1[:, :, None, None], 9, axis=2).reshape(64, 32, 3, 3)
    after = _rewrite(_conv_module(w3, (2, 32, 6, 6), padding=1))
    (decision,) = _decisions(after).values()
    assert decision["kernel"] == "dense" and "only 1x1, stride-1" in decision["reason"]
    assert decision["reason"].startswith(RULE)


# --- numerics: the rewritten module on the CPU ---------------------------------------------------


@pytest.mark.parametrize(
    "pattern, x_shape, n",
    [
        ((16, 1), (64, 96), 128),
        ((16, 1), (2, 7, 96), 100),  # leading batch dims, N not a multiple of 16
        ((8, 1), (1, 96), 40),  # batch 1
        ((32, 1), (3, 5, 90), 70),
        ("2:4", (64, 96), 128),
        ("4:8", (2, 3, 90), 50),  # K not a multiple of 8
    ],
)
def test_linear_numerics(pattern, x_shape, n):
    weight = _weight(pattern, n=n, k=x_shape[-1])
    after = _rewrite(_linear_module(weight, x_shape))
    assert _kernels(after), _decisions(after)
    x = np.random.default_rng(2).standard_normal(x_shape).astype("float32")
    np.testing.assert_allclose(_run_on_cpu(after, x), np.maximum(x @ weight.T, 0), **TOL)


def test_linear_numerics_with_tuning_records_in_the_cache(tmp_path):
    """A non-empty tuning cache makes the pipeline read the sparse kernels of the module; the
    CUDA N:M kernel's ``(1, M, K)`` input once made that raise (too many values to unpack)."""
    from tvm_sparse.targets import resolve_target
    from tvm_sparse.tune import TuningCache, TuningCacheWarning
    from tvm_sparse.tune.cache import Record

    cache = TuningCache(resolve_target("x86").tvm_target(), tmp_path)
    cache.append(Record("sparse", "sparse:another-model", "default", 1e-4, knobs={"lanes": 8}))
    weight = _weight("2:4", n=128, k=96)
    after = _rewrite(_linear_module(weight, (64, 96)))
    x = np.random.default_rng(2).standard_normal((64, 96)).astype("float32")
    with cache, pytest.warns(TuningCacheWarning, match="tuning records not applied to nm_matmul"):
        out = _run_on_cpu(after, x)
    np.testing.assert_allclose(out, np.maximum(x @ weight.T, 0), **TOL)


def test_pointwise_conv2d_numerics():
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((40, 24)) * block_mask(40, 24, (8, 1), 0.2, rng)).astype("float32")
    w = w[:, :, None, None]
    after = _rewrite(_conv_module(w, (2, 24, 5, 7)))
    assert _kernels(after) == ["bsr_matmul[8x1]"]
    x = rng.standard_normal((2, 24, 5, 7)).astype("float32")
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w)).numpy()
    np.testing.assert_allclose(_run_on_cpu(after, x), ref, **TOL)


def _pruned(name: str):
    model, (x,) = zoo.make(name)
    if name == "transformer":
        tvm_sparse.prune(model, (x,), pattern="n:m", n_m=(2, 4))
    else:
        tvm_sparse.prune(model, (x,), pattern="block", block_shape=(16, 1), sparsity=0.8)
    with torch.no_grad():
        expected = model(x).numpy()
    return model, x, expected


@pytest.mark.parametrize("name", ["mlp", "depthwise", "transformer"])
def test_pruned_zoo_model_numerics(name):
    model, x, expected = _pruned(name)
    mod = tvm_sparse.frontend.import_model(model, (x,)).mod
    with TARGET:
        mod = tvm.transform.Sequential(prepare_passes() + sparsity_passes(TARGET))(mod)
    # every pruned layer runs a sparse kernel or is shrunk (the depthwise block's expansion
    # loses its all-zero rows through ReLU6 and the depthwise conv)
    shrunk = any(d["kernel"] == "dense-shrunk" for d in _decisions(mod).values())
    assert _kernels(mod) or shrunk, _decisions(mod)
    np.testing.assert_allclose(_run_on_cpu(mod, x.numpy()), expected, **TOL)


# --- a Jetson build ------------------------------------------------------------------------------


def test_jetson_build_reports_every_pruned_layer():
    model, x, _ = _pruned("mlp")
    compiled = tvm_sparse.compile(model, "jetson-orin-nano", example_inputs=(x,))
    rows = [r for r in compiled.report.rows if RULE in r.reason]
    assert len(rows) == 3, compiled.report  # fc1, fc2, fc3: one row each
    sparse = [r for r in rows if r.kernel.startswith(("bsr_matmul[", "nm_matmul["))]
    assert sparse, compiled.report
    for row in sparse:  # the op is the sparse kernel itself, its reason the rule's verdict
        assert row.op == row.kernel and row.pattern != "dense", row
        assert f"{RULE}: " in row.reason and "kernel" in row.reason, row
    for row in rows:
        if row not in sparse:  # dense on dlight's GPU matmul, saying why
            assert "Matmul" in row.kernel and row.reason.endswith(": dense"), row


# --- on a GPU ----------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["mlp", "depthwise", "transformer"])
def test_pruned_zoo_model_runs_on_this_gpu(name):
    model, x, expected = _pruned(name)
    target = tvm.target.Target.from_device(tvm.cuda(0))
    compiled = tvm_sparse.compile(model, target, example_inputs=(x,))
    assert compiled.report.find(kernel="_matmul["), compiled.report
    np.testing.assert_allclose(compiled(x).numpy(), expected, atol=1e-4, rtol=1e-4)
