"""End-to-end: the model zoo compiled from PyTorch and ONNX matches PyTorch and ONNX Runtime."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
import tvm
import zoo

import tvm_sparse
from tvm_sparse.measure import block_mask

RTOL, ATOL = 1e-4, 1e-4


def _export_onnx(
    model: torch.nn.Module, x: torch.Tensor, *, dynamic: bool = False
) -> onnx.ModelProto:
    buffer = io.BytesIO()
    kwargs = {"dynamic_axes": {"x": {0: "batch"}, "y": {0: "batch"}}} if dynamic else {}
    torch.onnx.export(
        model, (x,), buffer, input_names=["x"], output_names=["y"], dynamo=False, **kwargs
    )
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_zoo_from_pytorch_matches_pytorch(name):
    model, (x,) = zoo.make(name)
    compiled = tvm_sparse.compile(model, "x86", example_inputs=(x,))
    with torch.no_grad():
        expected = model(x)
    got = compiled(x)
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=RTOL, atol=ATOL)
    # numpy in, numpy out
    assert isinstance(compiled(x.numpy()), np.ndarray)
    # every kernel got a real schedule
    assert all(row.kernel != "unscheduled" for row in compiled.report.rows)
    assert not [n for n in compiled.report.notes if "no schedule rule" in n]


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_zoo_from_onnx_matches_onnxruntime(name):
    import onnxruntime as ort

    model, (x,) = zoo.make(name)
    proto = _export_onnx(model, x)
    compiled = tvm_sparse.compile(proto, "x86")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"x": x.numpy()})
    np.testing.assert_allclose(compiled(x.numpy()), expected, rtol=RTOL, atol=ATOL)


def test_every_kernel_is_scheduled():
    model, (x,) = zoo.make("transformer")
    compiled = tvm_sparse.compile(model, "x86", example_inputs=(x,), sparsity="off")
    kernels = {row.kernel for row in compiled.report.rows if row.flops}
    assert "unscheduled" not in kernels
    assert not [n for n in compiled.report.notes if "no schedule rule" in n]


def test_pipeline_drops_into_tvm_compile():
    from tvm.relax.frontend.torch import from_exported_program

    model, (x,) = zoo.make("mlp")
    mod = from_exported_program(torch.export.export(model, (x,)))
    target = tvm.target.Target({"kind": "llvm"})
    ex = tvm.compile(mod, target, relax_pipeline=tvm_sparse.pipeline(target))
    vm = tvm.relax.VirtualMachine(ex, tvm.cpu())
    (got,) = vm["main"](tvm.runtime.tensor(x.numpy()))
    np.testing.assert_allclose(got.numpy(), model(x).detach().numpy(), rtol=RTOL, atol=ATOL)


def test_relax_irmodule_input():
    from tvm.relax.frontend.torch import from_exported_program

    model, (x,) = zoo.make("mlp")
    mod = from_exported_program(torch.export.export(model, (x,)))
    compiled = tvm_sparse.compile(mod, "x86")
    (got,) = compiled(x.numpy())
    np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=RTOL, atol=ATOL)


def test_exported_program_input_and_structure():
    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(8, 4)
            self.b = torch.nn.Linear(8, 2)

        def forward(self, x):
            return {"a": self.a(x), "b": torch.relu(self.b(x))}

    model, x = TwoHeads().eval(), torch.randn(3, 8)
    compiled = tvm_sparse.compile(torch.export.export(model, (x,)), "x86")
    got = compiled(x)
    assert set(got) == {"a", "b"}
    for key in got:
        np.testing.assert_allclose(got[key].numpy(), model(x)[key].detach().numpy(), rtol=RTOL)


def test_dynamic_batch_pytorch():
    model, (x,) = zoo.make("mlp")
    batch = torch.export.Dim("batch", min=1, max=512)
    compiled = tvm_sparse.compile(
        model, "x86", example_inputs=(x,), dynamic_shapes={"x": {0: batch}}
    )
    for n in (1, 7, 33):
        xn = torch.randn(n, x.shape[1])
        np.testing.assert_allclose(
            compiled(xn).numpy(), model(xn).detach().numpy(), rtol=RTOL, atol=ATOL
        )


def test_dynamic_batch_onnx():
    import onnxruntime as ort

    model, (x,) = zoo.make("cnn")
    proto = _export_onnx(model, x, dynamic=True)
    compiled = tvm_sparse.compile(proto, "x86")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        xn = np.random.default_rng(n).standard_normal((n, *x.shape[1:])).astype("float32")
        (expected,) = session.run(None, {"x": xn})
        np.testing.assert_allclose(compiled(xn), expected, rtol=RTOL, atol=ATOL)


def test_onnx_file_path(tmp_path):
    model, (x,) = zoo.make("depthwise")
    path = tmp_path / "m.onnx"
    onnx.save(_export_onnx(model, x), path)
    compiled = tvm_sparse.compile(str(path), "x86")
    np.testing.assert_allclose(compiled(x.numpy()), model(x).detach().numpy(), rtol=RTOL, atol=ATOL)


def test_export_library_and_load(tmp_path):
    model, (x,) = zoo.make("cnn")
    compiled = tvm_sparse.compile(model, "x86", example_inputs=(x,))
    path = compiled.export_library(tmp_path / "cnn.so")
    loaded = tvm_sparse.load(path)
    np.testing.assert_allclose(loaded(x).numpy(), compiled(x).numpy(), rtol=1e-6)
    assert [r.name for r in loaded.report.rows] == [r.name for r in compiled.report.rows]


def test_benchmark_stats():
    model, (x,) = zoo.make("mlp")
    stats = tvm_sparse.compile(model, "x86", example_inputs=(x,)).benchmark(x, repeat=5)
    assert stats["min_ms"] <= stats["median_ms"] <= stats["p90_ms"]
    assert stats["min_ms"] > 0


def test_report_rows():
    model, (x,) = zoo.make("cnn")
    report = tvm_sparse.compile(model, "x86", example_inputs=(x,), sparsity="off").report
    convs = report.find(op="conv2d")
    assert len(convs) == 6
    stem = convs[0]
    assert stem.input_shapes[1] == [3, 3, 3, 16]  # convs run NHWC: HWIO weights
    assert stem.flops == 2 * 2 * 16 * 16 * 16 * 3 * 3 * 3
    assert stem.weight_bytes == 16 * 3 * 3 * 3 * 4
    assert all(row.kernel for row in convs)
    data = report.to_dict()
    assert data["total_flops"] == report.total_flops
    assert "conv2d" in report.table()
    assert tvm_sparse.CompileReport.from_dict(data).to_dict() == data


def test_profile_times_each_kernel_the_model_runs():
    model, x = _pruned_ffn()
    compiled = tvm_sparse.compile(
        model, "x86", example_inputs=(x,), sparsity={"*": "bsr:16x1"}, verify_speed=False
    )
    rows = compiled.profile(x, calls=4)
    kernels = [r for r in rows if r.name.startswith("bsr_matmul")]
    # both layers run the forced kernel, once per call each
    assert [k.count for k in kernels] == [1, 1], [str(r) for r in rows]
    assert all(r.ms > 0 for r in rows)
    assert rows == sorted(rows, key=lambda r: -r.ms)
    # the profile leaves the model as it was
    np.testing.assert_allclose(compiled(x.numpy()), model(x).detach().numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="calls"):
        compiled.profile(x, calls=0)


def _pruned_mlp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64))
    with torch.no_grad():
        model[0].weight[::2] = 0  # half the hidden units: shrunk
    return model.eval(), torch.randn(8, 64)


def _pruned_ffn():
    """A shrunk first layer and a 90% 16x1-block second layer (a sparse kernel)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 768)
    ).eval()
    mask = block_mask(768, 512, (16, 1), 0.1, np.random.default_rng(0))
    with torch.no_grad():
        model[0].weight[::2] = 0  # half the hidden units: shrunk
        model[0].bias[::2] = 0
        model[2].weight.mul_(torch.from_numpy(mask.astype("float32")))
    return model, torch.randn(32, 64)


def test_speed_check_weighs_sparse_kernels_and_keeps_shrinking():
    model, x = _pruned_ffn()
    compiled = tvm_sparse.compile(model, "x86", example_inputs=(x,), verify_speed=True)
    (note,) = [n for n in compiled.report.notes if n.startswith("speed check")]
    assert "sparse kernels" in note and "dense kernels" in note and "interleaved rounds" in note
    kept_sparse = "kept the sparse kernels" in note
    assert any(r.kernel.startswith("bsr_") for r in compiled.report.rows) == kept_sparse
    # Whichever build won, the shrunk layer stays shrunk.
    assert any("(shrunk)" in row.kernel for row in compiled.report.rows), compiled.report
    with torch.no_grad():
        np.testing.assert_allclose(compiled(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-4)


def test_speed_check_skips_builds_without_sparse_kernels(monkeypatch):
    monkeypatch.setenv("TVM_SPARSE_VERIFY_SPEED", "1")
    model, x = _pruned_mlp()
    compiled = tvm_sparse.compile(model, "x86", example_inputs=(x,))
    assert not any(n.startswith("speed check") for n in compiled.report.notes)
    assert any("(shrunk)" in row.kernel for row in compiled.report.rows)


def test_speed_check_is_off_for_dense_models_and_other_machines(monkeypatch):
    monkeypatch.setenv("TVM_SPARSE_VERIFY_SPEED", "1")
    torch.manual_seed(0)
    dense, x = torch.nn.Linear(16, 8).eval(), torch.randn(2, 16)
    compiled = tvm_sparse.compile(dense, "x86", example_inputs=(x,))
    assert not any(n.startswith("speed check") for n in compiled.report.notes)
    model, x = _pruned_ffn()
    with pytest.raises(ValueError, match="does not run here"):
        tvm_sparse.compile(model, "arm-cortex-a72", example_inputs=(x,), verify_speed=True)
    compiled = tvm_sparse.compile(model, "x86", example_inputs=(x,))  # on by default
    assert any(n.startswith("speed check") for n in compiled.report.notes)


def test_speed_check_demotes_the_layers_with_the_least_evidence_first(monkeypatch):
    """Where every sparse kernel together does not beat dense kernels, the layers whose
    evidence was weak go dense and the rest is checked again; it keeps its kernels if it wins."""
    import sys

    from tvm_sparse.timing import Comparison

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(256, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 256)
    ).eval()
    rng = np.random.default_rng(0)
    with torch.no_grad():
        model[0].weight.mul_(torch.from_numpy(block_mask(1024, 256, (16, 1), 0.1, rng) * 1.0))
        model[2].weight.mul_(torch.from_numpy((rng.random((256, 1024)) < 0.4) * 1.0))
    x = torch.randn(32, 256)
    plain = tvm_sparse.compile(model, "x86", example_inputs=(x,))
    layers = sorted(r.layer for r in plain.report.rows if r.layer)
    sparsity = {"*": "auto", layers[-1]: "unstructured"}  # the 40% layer: est. well under 1.5x
    verdicts = iter(["dense kernels", "sparse kernels"])

    def check(pruned, shrunk, inputs):
        winner = next(verdicts)
        return Comparison(winner, {"sparse kernels": 1.0, "dense kernels": 1.0}, {}, 5, True)

    monkeypatch.setattr(sys.modules["tvm_sparse.compile"], "_check", check)
    compiled = tvm_sparse.compile(
        model, "x86", example_inputs=(x,), sparsity=sparsity, verify_speed=True
    )
    sparse = {r.layer: r for r in compiled.report.rows if r.kernel.startswith("bsr_")}
    assert list(sparse) == [layers[0]], compiled.report
    assert sparse[layers[0]].speedup >= 1.5
    (note,) = [n for n in compiled.report.notes if n.startswith("speed check")]
    assert f"run dense kernels ({layers[-1]})" in note and "kept their sparse kernels" in note
    with torch.no_grad():
        np.testing.assert_allclose(compiled(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-4)
