"""The prepared GPU script: its dry run builds every case for a Jetson and assembles it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import tvm

from benchmarks import gpu
from tvm_sparse.targets.cuda_resources import nvcc_arches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif("sm_87" not in nvcc_arches(), reason="no nvcc that targets sm_87 on PATH")
def test_the_dry_run_builds_and_assembles_every_case(tmp_path, monkeypatch):
    monkeypatch.setenv("TVM_SPARSE_GPU_RESOURCES", "1")
    assert gpu.main(["--dry-run", "--small", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "gpu-dry-run.json").read_text())["rows"]
    cases = [(c.model, c.variant) for c in gpu.CASES]
    assert [(r["model"], r["variant"], r["dtype"]) for r in rows] == [
        (*c, d) for c in cases for d in gpu.DTYPES
    ]
    for row in rows:
        assert row["cuda_kernels"] > 0 and row["spilling_kernels"] == 0, row
        assert 0 < row["min_occupancy"] <= 1 and row["max_registers"] <= 255, row
        assert row["gpu"] == "none (dry run for jetson-orin-nano)"
    kernels = {(r["variant"], r["dtype"]): r["kernels"] for r in rows}
    assert "nm_matmul[2:4]" in kernels["2:4", "float32"]
    assert "mma_sp_matmul[2:4]" in kernels["2:4", "float16"]  # sparse tensor cores on sm_87
    for dtype in gpu.DTYPES:
        assert "bsr_matmul[16x1]" in kernels["bsr 16x1 90%", dtype]
        assert "(shrunk)" in kernels["half channels", dtype]
    assert "| model | variant | dtype |" in (tmp_path / "gpu-dry-run.md").read_text()


@pytest.mark.skipif(tvm.cuda(0).exist, reason="this machine has a CUDA GPU")
def test_without_a_gpu_the_script_says_so_and_how_to_dry_run():
    result = subprocess.run(
        ["bash", os.path.join(ROOT, "benchmarks", "gpu.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PATH": os.path.dirname(sys.executable) + ":" + os.environ["PATH"]},
    )
    assert result.returncode == 2, result.stderr
    assert "no CUDA GPU visible to TVM" in result.stderr and "--dry-run" in result.stderr
