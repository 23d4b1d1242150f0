import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from tvm_sparse.passes.detect_sparsity import (
    DetectSparsity,
    WeightSparsity,
    analyze_weight,
    unique_binding_names,
)

RNG_SEED = 0


def _block_mask(rng, shape, block, keep=0.5):
    rows, cols = shape
    grid = rng.random((rows // block[0], cols // block[1])) < keep
    grid[0, 0] = True
    return np.kron(grid, np.ones(block, dtype=bool))


# --- analyze_weight ------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [(16, 1), (1, 4), (4, 4), (16, 16), (32, 1)])
def test_block_shape_found(block):
    rng = np.random.default_rng(RNG_SEED)
    mask = _block_mask(rng, (64, 64), block)
    weight = rng.standard_normal(mask.shape).astype("float32") * mask
    result = analyze_weight(weight)
    assert result.block_shape == block
    assert result.block_density == pytest.approx(mask.mean())
    assert result.density == pytest.approx(mask.mean())


def test_block_shape_not_multiple_of_shape():
    rng = np.random.default_rng(RNG_SEED)
    mask = _block_mask(rng, (32, 32), (4, 4))[:30, :29]
    result = analyze_weight(mask.astype("float32"))
    assert result.block_shape == (4, 4)
    assert result.shape == (30, 29)


def test_unstructured_is_1x1():
    rng = np.random.default_rng(RNG_SEED)
    weight = rng.standard_normal((48, 40)) * (rng.random((48, 40)) < 0.3)
    result = analyze_weight(weight)
    assert result.block_shape == (1, 1)
    assert result.nm is None


def _nm_weight(rng, rows, cols, n, m):
    weight = rng.standard_normal((rows, cols)).astype("float32")
    for r in range(rows):
        for g in range(0, cols, m):
            drop = rng.permutation(m)[: m - n] + g
            weight[r, drop[drop < cols]] = 0
    return weight


@pytest.mark.parametrize("nm", [(2, 4), (4, 8)])
def test_nm_detected(nm):
    rng = np.random.default_rng(RNG_SEED)
    weight = _nm_weight(rng, 16, 32, *nm)
    assert analyze_weight(weight).nm == nm


def test_nm_padded_tail_and_dense():
    rng = np.random.default_rng(RNG_SEED)
    # 30 columns: the last group of four has two padding zeros.
    weight = _nm_weight(rng, 8, 32, 2, 4)[:, :30]
    assert analyze_weight(weight).nm == (2, 4)
    assert analyze_weight(np.ones((8, 30))).nm is None


def test_zero_channels():
    weight = np.ones((6, 5), dtype="float32")
    weight[[1, 4], :] = 0
    weight[:, 2] = 0
    result = analyze_weight(weight)
    assert result.zero_out_channels == (1, 4)
    assert result.zero_in_channels == (2,)
    assert result.density == pytest.approx(16 / 30)


def test_all_zero_and_dense():
    zero = analyze_weight(np.zeros((5, 7)))
    assert zero.density == 0.0
    assert zero.zero_out_channels == tuple(range(5))
    assert zero.block_density == 0.0
    dense = analyze_weight(np.ones((5, 7)))
    assert dense.density == 1.0
    assert dense.zero_out_channels == () and dense.zero_in_channels == ()
    assert dense.block_density == 1.0


def test_attr_round_trip_through_tvm():
    rng = np.random.default_rng(RNG_SEED)
    result = analyze_weight(_nm_weight(rng, 8, 16, 2, 4))
    assert WeightSparsity.from_attr(result.to_attr()) == result
    func = relax.Function([], relax.Tuple([])).with_attr("a", result.to_attr())
    assert WeightSparsity.from_attr(func.attrs["a"]) == result
    dense = analyze_weight(np.ones((3, 3)))
    assert WeightSparsity.from_attr(dense.to_attr()).nm is None


def test_invalid_arguments():
    with pytest.raises(ValueError, match="2-D"):
        analyze_weight(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="blocks"):
        analyze_weight(np.ones((2, 3)), blocks=())


# --- DetectSparsity ------------------------------------------------------------------------------


def _bind(mod, **params):
    return relax.transform.BindParams("main", params)(mod)


def test_detect_matmul_and_conv():
    @I.ir_module
    class Before:
        @R.function
        def main(
            x: R.Tensor((1, 2, 4, 4), "float32"),
            w0: R.Tensor((4, 2, 3, 3), "float32"),
            w1: R.Tensor((64, 8), "float32"),
        ):
            with R.dataflow():
                lv = R.nn.conv2d(x, w0, padding=1)
                lv1 = R.reshape(lv, R.shape([1, 64]))
                lv2 = R.matmul(lv1, w1)
                R.output(lv2)
            return lv2

    @I.ir_module
    class Expected:
        @R.function
        def main(
            x: R.Tensor((1, 2, 4, 4), "float32"),
            w0: R.Tensor((4, 2, 3, 3), "float32"),
            w1: R.Tensor((64, 8), "float32"),
        ):
            R.func_attr(
                {
                    "tvm_sparse.weights": {
                        "lv": {
                            "shape": [4, 18],
                            "density": 0.5,
                            "zero_out_channels": [1, 3],
                            "zero_in_channels": [],
                            "block_shape": [1, 4],
                            "block_density": 0.5,
                            "nm": [],
                            "op": "conv2d",
                            "groups": 1,
                            "kernel": [3, 3],
                        },
                        "lv2": {
                            "shape": [8, 64],
                            "density": 1.0,
                            "zero_out_channels": [],
                            "zero_in_channels": [],
                            "block_shape": [16, 16],
                            "block_density": 1.0,
                            "nm": [],
                            "op": "matmul",
                            "groups": 1,
                        },
                    }
                }
            )
            with R.dataflow():
                lv = R.nn.conv2d(x, w0, padding=1)
                lv1 = R.reshape(lv, R.shape([1, 64]))
                lv2 = R.matmul(lv1, w1)
                R.output(lv2)
            return lv2

    w0 = np.ones((4, 2, 3, 3), dtype="float32")
    w0[1::2] = 0
    w1 = np.ones((64, 8), dtype="float32")
    after = DetectSparsity()(_bind(Before, w0=w0, w1=w1))
    tvm.ir.assert_structural_equal(after, _bind(Expected, w0=w0, w1=w1))


def test_detect_sees_through_permute_dims():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 4), "float32"), w: R.Tensor((6, 4), "float32")):
            with R.dataflow():
                wt = R.permute_dims(w)
                lv = R.matmul(x, wt)
                R.output(lv)
            return lv

    w = np.ones((6, 4), dtype="float32")
    w[2] = 0
    after = DetectSparsity()(_bind(Before, w=w))
    record = WeightSparsity.from_attr(after["main"].attrs["tvm_sparse.weights"]["lv"])
    assert record.shape == (6, 4)
    assert record.zero_out_channels == (2,)


def test_no_weights_leaves_module_unchanged():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 4), "float32"), w: R.Tensor((4, 4), "float32")):
            with R.dataflow():
                lv = R.matmul(x, w)  # weight is not a constant
                lv1 = R.nn.relu(lv)
                R.output(lv1)
            return lv1

    after = DetectSparsity()(Before)
    tvm.ir.assert_structural_equal(after, Before)


def test_rerun_refreshes_attribute():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 4), "float32"), w: R.Tensor((4, 4), "float32")):
            with R.dataflow():
                lv = R.matmul(x, w)
                R.output(lv)
            return lv

    first = DetectSparsity()(_bind(Before, w=np.ones((4, 4), "float32")))
    assert WeightSparsity.from_attr(first["main"].attrs["tvm_sparse.weights"]["lv"]).density == 1.0
    # Another pass changes the weight; detection must reflect the new IR.
    second_weight = np.zeros((4, 4), "float32")
    second = first.clone()
    second["main"] = _bind(Before, w=second_weight)["main"].with_attr(
        "tvm_sparse.weights", first["main"].attrs["tvm_sparse.weights"]
    )
    refreshed = DetectSparsity()(second)
    record = refreshed["main"].attrs["tvm_sparse.weights"]["lv"]
    assert WeightSparsity.from_attr(record).density == 0.0
    # And a function that no longer has constant weights loses the stale attribute.
    stale = Before.clone()
    stale["main"] = Before["main"].with_attr(
        "tvm_sparse.weights", first["main"].attrs["tvm_sparse.weights"]
    )
    assert "tvm_sparse.weights" not in DetectSparsity()(stale)["main"].attrs


def test_repeated_binding_names_are_disambiguated():
    # BlockBuilder uniquifies names, so build the function by hand, as a frontend might.
    ty = relax.TensorType((1, 4), "float32")
    x = relax.Var("x", ty)
    a = relax.DataflowVar("lv", ty)
    b = relax.Var("lv", ty)
    block = relax.DataflowBlock(
        [
            relax.VarBinding(a, relax.op.matmul(x, relax.const(np.ones((4, 4), "float32")))),
            relax.VarBinding(b, relax.op.matmul(a, relax.const(np.zeros((4, 4), "float32")))),
        ]
    )
    func = relax.Function([x], relax.SeqExpr([block], b), ty).with_attr("global_symbol", "main")
    mod = DetectSparsity()(tvm.IRModule({"main": func}))
    func = mod["main"]
    names = unique_binding_names(func)
    assert list(names.values()) == ["lv", "lv_1"]
    assert "lv_1: " in mod.script()
    weights = func.attrs["tvm_sparse.weights"]
    assert WeightSparsity.from_attr(weights["lv"]).density == 1.0
    assert WeightSparsity.from_attr(weights["lv_1"]).density == 0.0


def test_torch_import_names_match_printer():
    torch = pytest.importorskip("torch")
    from tvm.relax.frontend.torch import from_exported_program

    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 3, 1)
    ).eval()
    with torch.no_grad():
        model[0].weight[1] = 0
    ep = torch.export.export(model, (torch.randn(1, 2, 5, 5),))
    mod = from_exported_program(ep)
    mod = relax.transform.DecomposeOpsForInference()(mod)
    mod = relax.transform.FoldConstant()(mod)
    mod = DetectSparsity()(mod)
    weights = mod["main"].attrs["tvm_sparse.weights"]
    assert {str(weights[k]["op"]) for k in weights} == {"conv2d"}
    # Every key is a binding name as the TVMScript printer shows it.
    text = mod.script()
    for key in weights:
        assert f"\n            {key}: " in text
    first = [k for k in weights if tuple(weights[k]["zero_out_channels"]) == (1,)]
    assert len(first) == 1
