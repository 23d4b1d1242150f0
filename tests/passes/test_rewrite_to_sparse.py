import numpy as np
import pytest
import torch
import torch.nn.utils.prune
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

import tvm_sparse
from tvm_sparse.kernels import BSRMatmulKnobs, Calibration, bsr_matmul, to_bsr
from tvm_sparse.measure import block_mask, nm_mask
from tvm_sparse.passes.detect_sparsity import DetectSparsity
from tvm_sparse.passes.rewrite_to_sparse import (
    DECISIONS_ATTR,
    RewriteToSparse,
    SparsityConfig,
)
from tvm_sparse.targets import get_preset

TARGET = get_preset("x86").tvm_target()  # the host CPU: tests run the code they build
ATOL = {"float32": 1e-4}

#: A fixed table so decisions do not depend on the machine running the tests.
CALIBRATION = Calibration(
    host="test",
    dense={1: 20.0, 16: 100.0, 128: 150.0},
    sparse={
        "bsr_matmul[16x1]": {1: {0.1: 20.0}, 128: {0.05: 90.0, 0.5: 95.0}},
        "bsr_matmul[1x4]": {1: {0.1: 2.0}, 128: {0.05: 40.0, 0.5: 40.0}},
        "bsr_matmul[4x4]": {1: {0.1: 2.0}, 128: {0.05: 70.0, 0.5: 70.0}},
        "bsr_matmul[1x1]": {1: {0.1: 3.0}, 128: {0.05: 38.0, 0.5: 38.0}},
        "nm_matmul[2:4]": {1: {0.5: 1.0}, 128: {0.5: 18.0}},
    },
)


def _rewrite(mod, sparsity="auto"):
    mod = relax.transform.FoldConstant()(mod)
    mod = DetectSparsity()(mod)
    return RewriteToSparse(TARGET, sparsity=sparsity, calibration=CALIBRATION)(mod)


def _linear_module(weight: np.ndarray, x_shape, bias: bool = False) -> tvm.IRModule:
    """``x @ weight.T`` as the torch importer writes it: permute_dims of a constant."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, relax.op.permute_dims(relax.const(weight))))
            if bias:
                y = bb.emit(relax.op.add(y, relax.const(np.ones(weight.shape[0], "float32"))))
            out = bb.emit_output(relax.op.nn.relu(y))
        bb.emit_func_output(out)
    return bb.get()


def _run(mod: tvm.IRModule, *inputs: np.ndarray) -> np.ndarray:
    exe = tvm.compile(mod, TARGET, relax_pipeline=tvm_sparse.pipeline(TARGET, sparsity="off"))
    vm = relax.VirtualMachine(exe, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in inputs]).numpy()


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


# --- structure: Before / Expected -----------------------------------------------------------


def _weight_16x1(rng) -> np.ndarray:
    mask = block_mask(32, 8, (16, 1), 0.25, rng)
    mask[:16, 0] = True  # at least one block
    return (rng.standard_normal((32, 8)) * mask).astype("float32")


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
            x: T.Buffer((16, 8), "float32"),
            data: T.Buffer((1, 1, 16), "float32"),
            indices: T.Buffer((1,), "int32"),
            indptr: T.Buffer((3,), "int32"),
            y: T.Buffer((16, 32), "float32"),
        ):
            T.evaluate(0)  # replaced by the generated kernel below

        @R.function
        def main(
            x: R.Tensor((16, 8), "float32"),
            data: R.Tensor((1, 1, 16), "float32"),
            indices: R.Tensor((1,), "int32"),
            indptr: R.Tensor((3,), "int32"),
        ):
            cls = Expected
            with R.dataflow():
                lv = R.call_tir(
                    cls.bsr_matmul_16x1,
                    (x, data, indices, indptr),
                    out_ty=R.Tensor((16, 32), "float32"),
                )
                R.output(lv)
            return lv

    weight = np.zeros((32, 8), "float32")
    weight[:16, 3] = np.arange(1, 17)  # one 16x1 block: density 1/16
    before = relax.transform.BindParams("main", {"w": weight.T.copy()})(Before)
    after = _rewrite(before)

    bsr = to_bsr(weight, (16, 1))
    knobs = BSRMatmulKnobs.for_target(TARGET).resolve((16, 1), 16, 32)
    kernel = bsr_matmul(16, 8, 32, (16, 1), bsr.nnzb, bsr.block_rows, knobs=knobs)
    kernel = kernel.with_attr("tvm_sparse.flops", 2 * 16 * bsr.data.size)
    expected = Expected.clone()
    expected.update_func(expected.get_global_var("bsr_matmul_16x1"), kernel)
    expected = relax.transform.BindParams(
        "main", {"data": bsr.data_cr(), "indices": bsr.indices, "indptr": bsr.indptr}
    )(expected)

    strip = {"main": lambda f: f.without_attr(DECISIONS_ATTR).without_attr("tvm_sparse.weights")}
    after_main = strip["main"](after["main"])
    after = after.clone()
    after.update_func(after.get_global_var("main"), after_main)
    tvm.ir.assert_structural_equal(after, expected, map_free_vars=True)
    decision = _decisions(_rewrite(before))["lv"]
    assert decision["kernel"] == "bsr_matmul[16x1]"
    assert decision["pattern"] == "block 16x1"
    assert "faster than dense" in decision["reason"]


def test_dense_weight_is_unchanged():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((32, 16)).astype("float32")
    before = DetectSparsity()(relax.transform.FoldConstant()(_linear_module(weight, (4, 16))))
    after = RewriteToSparse(TARGET, calibration=CALIBRATION)(before)
    stripped = after["main"].without_attr(DECISIONS_ATTR)
    tvm.ir.assert_structural_equal(stripped, before["main"])
    (decision,) = _decisions(after).values()
    assert decision["kernel"] == "dense"
    assert "kept dense" in decision["reason"]
    assert _kernels(after) == []


def test_decisions_merge_with_existing_attribute():
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((64, 32)) * block_mask(64, 32, (16, 1), 0.1, rng)).astype(
        "float32"
    )
    mod = DetectSparsity()(relax.transform.FoldConstant()(_linear_module(weight, (8, 32))))
    func = mod["main"].with_attr(DECISIONS_ATTR, {"other": {"kernel": "shrunk"}})
    mod.update_func(mod.get_global_var("main"), func)
    after = RewriteToSparse(TARGET, calibration=CALIBRATION)(mod)
    decisions = _decisions(after)
    assert decisions["other"] == {"kernel": "shrunk"}
    assert len(decisions) == 2


# --- configuration ----------------------------------------------------------------------------


def test_config_validation():
    assert SparsityConfig.from_arg("off").default.kind == "dense"
    cfg = SparsityConfig.from_arg({"lv": "bsr:4x4", "*": "dense"})
    assert cfg.choice_for("lv").block == (4, 4)
    assert cfg.choice_for("other").kind == "dense"
    with pytest.raises(ValueError, match=r"sparsity\['lv'\].*choose one of"):
        SparsityConfig.from_arg({"lv": "sparse-please"})
    assert SparsityConfig.from_arg("nm:2:4:gather").default.variant == "gather"
    with pytest.raises(ValueError, match="VARIANT: permute or gather"):
        SparsityConfig.from_arg("nm:2:4:fast")
    with pytest.raises(ValueError, match="sparsity must be"):
        SparsityConfig.from_arg(3)


def test_config_unknown_layer_names_candidates():
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((64, 32)) * block_mask(64, 32, (16, 1), 0.1, rng)).astype(
        "float32"
    )
    with pytest.raises(ValueError, match=r"\['fc9'\].*candidates are"):
        _rewrite(_linear_module(weight, (8, 32)), sparsity={"fc9": "bsr"})


def test_config_forces_dense_and_sparse():
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((64, 32)) * block_mask(64, 32, (16, 1), 0.1, rng)).astype(
        "float32"
    )
    mod = _linear_module(weight, (8, 32))
    name = next(
        iter(
            DetectSparsity()(relax.transform.FoldConstant()(mod))["main"].attrs[
                "tvm_sparse.weights"
            ]
        )
    )
    dense = _rewrite(mod, sparsity={name: "dense"})
    assert _kernels(dense) == [] and "requested" in _decisions(dense)[name]["reason"]
    forced = _rewrite(mod, sparsity={name: "unstructured"})
    assert _kernels(forced) == ["bsr_matmul[1x1]"]
    assert _decisions(forced)[name]["pattern"] == "unstructured"


def test_never_sparse_when_model_says_slower():
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((64, 32)) * block_mask(64, 32, (1, 4), 0.6, rng)).astype(
        "float32"
    )
    after = _rewrite(_linear_module(weight, (128, 32)))
    (decision,) = _decisions(after).values()
    assert decision["kernel"] == "dense" and "kept dense" in decision["reason"]


class _StubTimer:
    """A LayerTimer stand-in: fixed times, or none (as when the budget is spent)."""

    def __init__(self, ms: dict[str, float] | None, winner: str = "dense"):
        from tvm_sparse.layer_timing import LayerTiming
        from tvm_sparse.runtime.runner import Runner

        self.runner = Runner()
        self.asked: list[tuple] = []
        self.result = None if ms is None else LayerTiming(ms=ms, winner=winner, rounds=5)
        self.exhausted = ms is None

    def matmul(self, x_shape, weight, candidates, epilogue=()):
        self.asked.append((x_shape, weight.shape, list(candidates)))
        return self.result

    def conv2d(self, x_shape, weight, *, strides, padding, dilation, candidates):
        self.asked.append((x_shape, weight.shape, strides, list(candidates)))
        return self.result


@pytest.mark.parametrize("winner", ["dense", "bsr:16x1", "bsr:8x1"])
def test_measured_times_overrule_the_table(winner):
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((64, 32)) * block_mask(64, 32, (16, 1), 0.25, rng)).astype(
        "float32"
    )
    ms = {"dense": 1.0, "bsr:16x1": 0.5, "bsr:8x1": 0.8}
    timer = _StubTimer(ms, winner)
    mod = relax.transform.FoldConstant()(_linear_module(weight, (2, 8, 32)))
    after = RewriteToSparse(TARGET, calibration=CALIBRATION, layer_timer=timer)(
        DetectSparsity()(mod)
    )
    # leading dims fold into rows; the table's two best sparse kernels are the candidates
    assert timer.asked == [((16, 32), (64, 32), ["bsr:16x1", "bsr:8x1"])]
    (decision,) = _decisions(after).values()
    expected = {"dense": "dense", "bsr:16x1": "bsr_matmul[16x1]", "bsr:8x1": "bsr_matmul[8x1]"}
    assert decision["kernel"] == expected[winner]
    assert "measured on this machine: dense 1.000 ms, bsr:16x1 0.500 ms" in decision["reason"]
    x = rng.standard_normal((2, 8, 32)).astype("float32")
    np.testing.assert_allclose(
        _run(after, x), np.maximum(x @ weight.T, 0), rtol=1e-4, atol=ATOL["float32"]
    )


def _knobs(mod: tvm.IRModule) -> list[dict]:
    return [
        {str(a): b for a, b in f.attrs["tvm_sparse.knobs"].items()}
        for f in mod.functions.values()
        if isinstance(f, tvm.tirx.PrimFunc) and f.attrs and "tvm_sparse.knobs" in f.attrs
    ]


@pytest.mark.parametrize("winner", ["nm:2:4:permute", "nm:2:4:gather"])
def test_both_nm_kernels_are_timed_and_the_faster_built(winner):
    # x86 has two N:M kernels whose order depends on the layer and the core: the table rates
    # N:M as one, the measurement times both
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((64, 32)) * nm_mask(64, 32, (2, 4), rng)).astype("float32")
    ms = {"dense": 1.0, "nm:2:4:permute": 0.7, "nm:2:4:gather": 0.6, "unstructured": 3.0}
    timer = _StubTimer(ms, winner)
    # a table that ranks N:M first
    nm_first = Calibration(host="test", dense=CALIBRATION.dense, sparse={
        **CALIBRATION.sparse, "nm_matmul[2:4]": {1: {0.5: 1.0}, 128: {0.5: 400.0}}})  # fmt: skip
    mod = relax.transform.FoldConstant()(_linear_module(weight, (128, 32)))
    after = RewriteToSparse(TARGET, calibration=nm_first, layer_timer=timer)(DetectSparsity()(mod))
    ((_, _, asked),) = timer.asked
    assert "nm:2:4:permute" in asked and "nm:2:4:gather" in asked and "nm:2:4" not in asked
    (decision,) = _decisions(after).values()
    assert decision["kernel"] == "nm_matmul[2:4]"
    assert decision["variant"] == winner.rsplit(":", 1)[1]
    assert f"fastest as {winner}" in decision["reason"]
    (knobs,) = _knobs(after)
    assert (knobs.get("variant") == "permute") == (winner == "nm:2:4:permute")
    x = rng.standard_normal((128, 32)).astype("float32")
    np.testing.assert_allclose(
        _run(after, x), np.maximum(x @ weight.T, 0), rtol=1e-4, atol=ATOL["float32"]
    )


@pytest.mark.parametrize("variant", ["permute", "gather"])
def test_a_named_nm_kernel_is_built(variant):
    rng = np.random.default_rng(3)
    weight = (rng.standard_normal((96, 64)) * nm_mask(96, 64, (2, 4), rng)).astype("float32")
    after = _rewrite(_linear_module(weight, (40, 64), bias=True), {"*": f"nm:2:4:{variant}"})
    (decision,) = _decisions(after).values()
    assert decision["variant"] == variant and f"(2:4 ({variant})" not in decision["reason"]
    assert f"as 2:4 ({variant})" in decision["reason"]
    (knobs,) = _knobs(after)
    assert (knobs.get("variant") == "permute") == (variant == "permute")
    x = rng.standard_normal((40, 64)).astype("float32")
    np.testing.assert_allclose(
        _run(after, x), _masked_linear(weight, x, True), atol=ATOL["float32"], rtol=1e-4
    )


def test_a_permute_kernel_where_none_applies_falls_back_to_gather_and_says_so():
    # 2:4 groups of a K that is not a whole number of groups: no permute (it would read past
    # the row), the gather kernel pads the groups
    rng = np.random.default_rng(4)
    weight = (rng.standard_normal((32, 30)) * nm_mask(32, 30, (2, 4), rng)).astype("float32")
    after = _rewrite(_linear_module(weight, (16, 30)), {"*": "nm:2:4:permute"})
    (decision,) = _decisions(after).values()
    assert decision["variant"] == "gather" and "the permute kernel needs" in decision["reason"]
    x = rng.standard_normal((16, 30)).astype("float32")
    np.testing.assert_allclose(_run(after, x), np.maximum(x @ weight.T, 0), atol=1e-4, rtol=1e-4)


def test_unmeasured_layers_keep_the_table_and_say_why():
    rng = np.random.default_rng(0)
    weight = _weight_16x1(rng)
    mod = relax.transform.FoldConstant()(_linear_module(weight, (128, 8)))
    after = RewriteToSparse(TARGET, calibration=CALIBRATION, layer_timer=_StubTimer(None))(
        DetectSparsity()(mod)
    )
    (decision,) = _decisions(after).values()
    assert decision["reason"].endswith("measuring budget spent on this machine")
    # a layer the config names is not measured: the user's choice stands
    timer = _StubTimer({"dense": 1.0, "bsr:16x1": 0.1}, "bsr:16x1")
    RewriteToSparse(TARGET, sparsity={"*": "dense"}, calibration=CALIBRATION, layer_timer=timer)(
        DetectSparsity()(mod)
    )
    assert timer.asked == []


class _SpentAfterOneTimer(_StubTimer):
    """Measures the first layer it is asked for; the budget is spent after that."""

    def matmul(self, x_shape, weight, candidates, epilogue=()):
        result = super().matmul(x_shape, weight, candidates, epilogue)
        self.result, self.exhausted = None, True
        return result


@pytest.mark.parametrize("sparse_ms, kernel", [(2.0, "dense"), (0.25, "bsr_matmul[16x1]")])
def test_layers_past_the_budget_scale_the_table_by_the_measured_ones(sparse_ms, kernel):
    rng = np.random.default_rng(0)
    w1, w2 = (
        (rng.standard_normal((64, 64)) * block_mask(64, 64, (16, 1), 0.25, rng)).astype("float32")
        for _ in range(2)
    )
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((128, 64), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            h = bb.emit(relax.op.nn.relu(relax.op.matmul(x, relax.const(w1.T.copy()))))
            out = bb.emit_output(relax.op.matmul(h, relax.const(w2.T.copy())))
        bb.emit_func_output(out)
    # the table says 16x1 is far faster than dense; the first layer measures otherwise (or
    # agrees), and the second, unmeasured, follows what the first found of the table
    timer = _SpentAfterOneTimer({"dense": 1.0, "bsr:16x1": sparse_ms, "bsr:8x1": 3.0}, "dense")
    after = RewriteToSparse(TARGET, calibration=CALIBRATION, layer_timer=timer)(
        DetectSparsity()(bb.get())
    )
    first, second = sorted(_decisions(after).values(), key=lambda d: "budget" in d["reason"])
    assert "measured on this machine" in first["reason"]
    assert second["kernel"] == kernel
    assert "measuring budget spent on this machine: table est." in second["reason"]
    assert "candidate measured in this compile" in second["reason"], second["reason"]
    xin = rng.standard_normal((128, 64)).astype("float32")
    np.testing.assert_allclose(
        _run(after, xin), np.maximum(xin @ w1.T, 0) @ w2.T, rtol=1e-4, atol=ATOL["float32"]
    )


# --- numerics vs PyTorch ----------------------------------------------------------------------


def _masked_linear(weight: np.ndarray, x: np.ndarray, bias: bool) -> np.ndarray:
    out = torch.nn.functional.linear(
        torch.from_numpy(x),
        torch.from_numpy(weight),
        torch.ones(weight.shape[0]) if bias else None,
    )
    return torch.relu(out).numpy()


@pytest.mark.parametrize(
    "pattern, x_shape, n",
    [
        ((16, 1), (64, 96), 128),
        ((1, 4), (64, 96), 128),
        ((4, 4), (64, 96), 128),
        ((16, 1), (2, 7, 96), 100),  # leading batch dims, N not a multiple of 16
        ((1, 4), (3, 5, 90), 50),  # K not a multiple of 4
        ((16, 1), (1, 96), 128),  # batch 1 (GEMV)
        ((1, 4), (1, 96), 100),
        ("2:4", (64, 96), 128),
        ("unstructured", (64, 96), 128),
        ("unstructured", (1, 96), 128),
    ],
)
def test_linear_numerics(pattern, x_shape, n):
    rng = np.random.default_rng(1)
    k = x_shape[-1]
    if pattern == "2:4":
        mask, sparsity = nm_mask(n, k, (2, 4), rng), "nm"
    elif pattern == "unstructured":
        dense = torch.nn.Linear(k, n, bias=False)
        torch.nn.utils.prune.l1_unstructured(dense, "weight", amount=0.9)
        mask, sparsity = dense.weight_mask.numpy().astype(bool), "unstructured"
    else:
        mask, sparsity = block_mask(n, k, pattern, 0.15, rng), "bsr"
    weight = (rng.standard_normal((n, k)) * mask).astype("float32")
    mod = _linear_module(weight, x_shape, bias=True)
    after = _rewrite(mod, sparsity={"*": sparsity})
    assert _kernels(after), _decisions(after)
    x = rng.standard_normal(x_shape).astype("float32")
    np.testing.assert_allclose(
        _run(after, x), _masked_linear(weight, x, True), atol=ATOL["float32"], rtol=1e-4
    )


@pytest.mark.parametrize("density", [0.0, 1.0])
def test_linear_edge_densities(density):
    rng = np.random.default_rng(2)
    weight = (rng.standard_normal((48, 32)) * (rng.random((48, 32)) < density)).astype("float32")
    after = _rewrite(_linear_module(weight, (8, 32)), sparsity={"*": "bsr:16x1"})
    assert _kernels(after) == ["bsr_matmul[16x1]"]
    x = rng.standard_normal((8, 32)).astype("float32")
    np.testing.assert_allclose(_run(after, x), _masked_linear(weight, x, False), atol=1e-4)


def test_all_zero_weight_auto_goes_sparse():
    weight = np.zeros((64, 32), "float32")
    after = _rewrite(_linear_module(weight, (8, 32)))
    (decision,) = _decisions(after).values()
    assert decision["kernel"].startswith("bsr_matmul")
    x = np.ones((8, 32), "float32")
    np.testing.assert_allclose(_run(after, x), np.zeros((8, 64)), atol=0)


def test_transformer_ffn_numerics():
    rng = np.random.default_rng(3)
    d, hidden, tokens = 64, 256, 24
    w1 = (rng.standard_normal((hidden, d)) * block_mask(hidden, d, (16, 1), 0.1, rng)).astype(
        "float32"
    )
    w2 = (rng.standard_normal((d, hidden)) * block_mask(d, hidden, (16, 1), 0.1, rng)).astype(
        "float32"
    )
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, tokens, d), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            h = bb.emit(relax.op.matmul(x, relax.op.permute_dims(relax.const(w1))))
            h = bb.emit(relax.op.nn.gelu(h))
            y = bb.emit(relax.op.matmul(h, relax.op.permute_dims(relax.const(w2))))
            out = bb.emit_output(relax.op.add(y, x))
        bb.emit_func_output(out)
    after = _rewrite(bb.get())
    assert _kernels(after) == ["bsr_matmul[16x1]", "bsr_matmul[16x1]"]
    xin = rng.standard_normal((2, tokens, d)).astype("float32")
    xt = torch.from_numpy(xin)
    ref = xt + torch.nn.functional.gelu(xt @ torch.from_numpy(w1).T) @ torch.from_numpy(w2).T
    np.testing.assert_allclose(_run(after, xin), ref.numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "kernel, stride, padding, block",
    [
        (1, 1, 0, (16, 1)),
        (3, 1, 1, (16, 1)),
        (3, 2, 1, (1, 4)),
        (1, 2, 0, (4, 4)),
        (3, 1, 0, (1, 1)),
    ],
)
def test_conv2d_numerics(kernel, stride, padding, block):
    rng = np.random.default_rng(4)
    out_c, in_c, size = 32, 16, 9
    k = in_c * kernel * kernel
    mask = block_mask(out_c, k, block, 0.2, rng).reshape(out_c, in_c, kernel, kernel)
    weight = (rng.standard_normal(mask.shape) * mask).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, in_c, size, size), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(
                relax.op.nn.conv2d(x, relax.const(weight), strides=stride, padding=padding)
            )
        bb.emit_func_output(out)
    after = _rewrite(bb.get(), sparsity={"*": f"bsr:{block[0]}x{block[1]}"})
    assert f"bsr_matmul[{block[0]}x{block[1]}]" in _kernels(after)
    xin = rng.standard_normal((2, in_c, size, size)).astype("float32")
    ref = torch.nn.functional.conv2d(
        torch.from_numpy(xin), torch.from_numpy(weight), stride=stride, padding=padding
    )
    np.testing.assert_allclose(_run(after, xin), ref.numpy(), atol=1e-4, rtol=1e-4)


def test_a_measured_conv_is_timed_in_its_own_shape():
    rng = np.random.default_rng(4)
    mask = block_mask(32, 16 * 9, (16, 1), 0.2, rng).reshape(32, 16, 3, 3)
    weight = (rng.standard_normal(mask.shape) * mask).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 16, 9, 9), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.conv2d(x, relax.const(weight), strides=2, padding=1))
        bb.emit_func_output(out)
    timer = _StubTimer({"dense": 1.0, "bsr:16x1": 0.4, "bsr:8x1": 0.9}, "bsr:16x1")
    after = RewriteToSparse(TARGET, calibration=CALIBRATION, layer_timer=timer)(
        DetectSparsity()(bb.get())
    )
    assert timer.asked == [((1, 16, 9, 9), (32, 16, 3, 3), (2, 2), ["bsr:16x1", "bsr:8x1"])]
    assert _kernels(after) == ["bsr_matmul[16x1]", "im2col"]
    xin = rng.standard_normal((1, 16, 9, 9)).astype("float32")
    ref = torch.nn.functional.conv2d(
        torch.from_numpy(xin), torch.from_numpy(weight), stride=2, padding=1
    )
    np.testing.assert_allclose(_run(after, xin), ref.numpy(), atol=1e-4, rtol=1e-4)


def test_grouped_conv_kept_dense_with_reason():
    rng = np.random.default_rng(5)
    weight = np.zeros((8, 4, 3, 3), "float32")
    weight[:, :, 1, 1] = rng.standard_normal((8, 4))
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 6, 6), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.conv2d(x, relax.const(weight), groups=2, padding=1))
        bb.emit_func_output(out)
    after = _rewrite(bb.get())
    (decision,) = _decisions(after).values()
    assert decision["kernel"] == "dense" and "groups=2" in decision["reason"]
