"""The tvm-sparse command line: compile, report, bench, targets, calibrate."""

from __future__ import annotations

import json

import numpy as np
import torch
import zoo

import tvm_sparse
from tvm_sparse.cli import main


def _onnx_file(tmp_path):
    model, (x,) = zoo.make("mlp")
    path = tmp_path / "mlp.onnx"
    torch.onnx.export(model, (x,), path, input_names=["x"], dynamo=False)
    return path, model, x


def test_compile_writes_a_loadable_library(tmp_path, capsys):
    path, model, x = _onnx_file(tmp_path)
    out = tmp_path / "mlp.so"
    assert main(["compile", str(path), "--target", "x86", "-o", str(out)]) == 0
    assert "matmul" in capsys.readouterr().out
    loaded = tvm_sparse.load(out)
    np.testing.assert_allclose(loaded(x.numpy()), model(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_report_json(tmp_path, capsys):
    path, _, _ = _onnx_file(tmp_path)
    assert main(["report", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len([r for r in data["rows"] if "matmul" in r["op"]]) == 3


def test_report_for_an_arm_target_predicts_kernel_times(tmp_path, capsys):
    from tvm_sparse.static_throughput import find_llvm_mca

    path, _, _ = _onnx_file(tmp_path)
    assert main(["report", str(path), "--target", "arm-cortex-a76"]) == 0
    out = capsys.readouterr()
    if find_llvm_mca() is None:
        assert "llvm-mca not found" in out.err
        return
    assert "| kernel | MFLOP | predicted GFLOP/s per core |" in out.out
    assert "predicted by llvm-mca on neoverse-n1" in out.out


def test_bench_prints_latency_table(tmp_path, capsys):
    path, _, _ = _onnx_file(tmp_path)
    assert main(["bench", str(path), "--repeat", "3"]) == 0
    out = capsys.readouterr()
    assert "| tvm_sparse |" in out.out and "| onnxruntime |" in out.out
    assert "compiling" in out.err  # progress goes to stderr


def test_exported_program_file(tmp_path, capsys):
    model, (x,) = zoo.make("mlp")
    path = tmp_path / "mlp.pt2"
    torch.export.save(torch.export.export(model, (x,)), path)
    assert main(["report", str(path)]) == 0
    assert "matmul" in capsys.readouterr().out


def test_unknown_target_is_a_clear_error(tmp_path, capsys):
    path, _, _ = _onnx_file(tmp_path)
    assert main(["report", str(path), "--target", "pentium"]) == 2
    assert "unknown target 'pentium'" in capsys.readouterr().err


def test_dtype_option(tmp_path, capsys):
    path, _, _ = _onnx_file(tmp_path)
    assert main(["report", str(path), "--target", "jetson-orin-nano", "--dtype", "float16"]) == 0
    out = capsys.readouterr().out
    assert "dtype float16" in out and "| float16->float32 |" in out
    assert main(["report", str(path), "--target", "x86", "--dtype", "float16"]) == 2
    assert "dtype='float16' is not supported" in capsys.readouterr().err


def test_missing_file_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "none.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_targets_lists_presets(capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    for name in tvm_sparse.targets.list_presets():
        assert name in out


def test_calibrate_measures_this_machine(tmp_path, monkeypatch, capsys):
    from tvm_sparse.kernels import load_calibration
    from tvm_sparse.measure import calibrate_host
    from tvm_sparse.targets import resolve_target

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    grid = {"ms": (8,), "blocks": ((4, 1),), "densities": (0.2,), "nm": ()}
    monkeypatch.setattr(calibrate_host, "QUICK_GRID", grid)
    assert main(["calibrate", "--quick"]) == 0
    assert "calibration table for this machine" in capsys.readouterr().out
    table = load_calibration(resolve_target("x86").tvm_target())
    assert "measured by calibrate" in table.evidence
    assert main(["calibrate", "--target", "arm-cortex-a72"]) == 2
    assert "cannot run" in capsys.readouterr().err
