"""Bad input gets a clear error naming the problem and what to do."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import zoo

import tvm_sparse


@pytest.fixture(scope="module")
def mlp():
    model, (x,) = zoo.make("mlp")
    return tvm_sparse.compile(model, "x86", example_inputs=(x,)), x


def test_unknown_target_lists_presets():
    model, (x,) = zoo.make("mlp")
    with pytest.raises(ValueError, match="unknown target 'x87'.*x86-avx512"):
        tvm_sparse.compile(model, "x87", example_inputs=(x,))


def test_target_of_wrong_type():
    model, (x,) = zoo.make("mlp")
    with pytest.raises(TypeError, match="preset name"):
        tvm_sparse.compile(model, 42, example_inputs=(x,))


def test_missing_example_inputs():
    model, _ = zoo.make("mlp")
    with pytest.raises(tvm_sparse.ModelImportError, match="example_inputs"):
        tvm_sparse.compile(model, "x86")


def test_truncated_onnx_file(tmp_path):
    model, (x,) = zoo.make("mlp")
    good = tmp_path / "good.onnx"
    torch.onnx.export(model, (x,), good, dynamo=False)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(good.read_bytes()[:200])
    with pytest.raises(tvm_sparse.ModelImportError, match="bad.onnx"):
        tvm_sparse.compile(str(bad), "x86")


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_text("this is not a model")
    with pytest.raises(tvm_sparse.ModelImportError):
        tvm_sparse.compile(str(path), "x86")


def test_missing_onnx_file(tmp_path):
    with pytest.raises(tvm_sparse.ModelImportError, match="does not exist"):
        tvm_sparse.compile(str(tmp_path / "nope.onnx"), "x86")


def test_malformed_onnx_graph():
    node = onnx.helper.make_node("Relu", ["missing_input"], ["y"])
    graph = onnx.helper.make_graph(
        [node], "g", [], [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])]
    )
    with pytest.raises(tvm_sparse.ModelImportError, match="malformed"):
        tvm_sparse.compile(onnx.helper.make_model(graph), "x86")


def test_op_tvm_cannot_import():
    node = onnx.helper.make_node("Det", ["x"], ["y"])
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3, 3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    with pytest.raises(tvm_sparse.UnsupportedOperatorError, match="Det"):
        tvm_sparse.compile(model, "x86")


def test_torch_op_tvm_cannot_import():
    class Weird(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.det(x)

    with pytest.raises(tvm_sparse.UnsupportedOperatorError, match="linalg_det"):
        tvm_sparse.compile(Weird(), "x86", example_inputs=(torch.randn(3, 3),))


def test_unsupported_model_type():
    with pytest.raises(tvm_sparse.ModelImportError, match="torch.nn.Module"):
        tvm_sparse.compile(object(), "x86")


def test_bad_sparsity_mode():
    model, (x,) = zoo.make("mlp")
    with pytest.raises(ValueError, match="sparsity='fast'"):
        tvm_sparse.compile(model, "x86", example_inputs=(x,), sparsity="fast")


def test_wrong_input_shape(mlp):
    compiled, x = mlp
    with pytest.raises(ValueError, match="dimension 1 is 63, expected 64"):
        compiled(np.zeros((4, 63), "float32"))


def test_wrong_input_rank(mlp):
    compiled, _ = mlp
    with pytest.raises(ValueError, match="expected rank 2"):
        compiled(np.zeros((4, 64, 1), "float32"))


def test_wrong_input_dtype(mlp):
    compiled, _ = mlp
    with pytest.raises(TypeError, match="dtype float64, expected float32"):
        compiled(np.zeros((4, 64)))


def test_wrong_input_count(mlp):
    compiled, x = mlp
    with pytest.raises(TypeError, match="takes 1 inputs"):
        compiled(x, x)


def test_wrong_input_type(mlp):
    compiled, _ = mlp
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        compiled([[1.0] * 64])


def test_load_missing_metadata(tmp_path):
    with pytest.raises(FileNotFoundError):
        tvm_sparse.load(tmp_path / "nothing.so")


def test_load_names_the_cpu_features_this_host_lacks(tmp_path):
    """A library built for AVX-512 never runs on a host without it: load says what is missing."""
    from tvm_sparse.targets import get_preset, missing_host_features

    missing = missing_host_features(get_preset("x86-avx512").tvm_target())
    if not missing:
        pytest.skip("this host runs AVX-512 code")
    model, (x,) = zoo.make("mlp")
    compiled = tvm_sparse.compile(model, "x86-avx512", example_inputs=(x,))
    path = compiled.export_library(tmp_path / "model.so")
    with pytest.raises(RuntimeError, match=f"cannot run: it lacks .*{missing[0]}"):
        tvm_sparse.load(path)


def test_load_keeps_the_target_it_was_built_for(tmp_path, mlp):
    compiled, x = mlp
    path = compiled.export_library(tmp_path / "model.so")
    again = tvm_sparse.load(path)
    assert str(again.target) == str(compiled.target)
    np.testing.assert_allclose(again(x).numpy(), compiled(x).numpy(), rtol=1e-5, atol=1e-6)


def test_bad_thread_config(mlp):
    model, (x,) = zoo.make("mlp")
    with pytest.raises(ValueError, match="num_threads"):
        tvm_sparse.ThreadConfig(num_threads=-2)
    with pytest.raises(TypeError, match="ThreadConfig"):
        tvm_sparse.compile(model, "x86", example_inputs=(x,), threads=4)
