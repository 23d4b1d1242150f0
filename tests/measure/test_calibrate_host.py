"""Measuring a calibration table here: stored per machine, resumed after a kill, refused for a
target this machine cannot run; a compile measures a quick one on first use."""

from __future__ import annotations

import json

import pytest

from tvm_sparse.kernels import CalibrationWarning, cost_model, default_cache_path, load_calibration
from tvm_sparse.measure import calibrate, calibrate_host, calibrate_on_first_use, kernel_timing
from tvm_sparse.targets import get_preset, machine_key

TARGET = get_preset("x86").tvm_target()
GRID = {"n": 64, "k": 64, "ms": (8,), "blocks": ((4, 1),), "densities": (0.2, 0.4), "nm": ()}


def test_a_table_is_measured_stored_and_read_back_as_this_machines(tmp_path):
    lines = []
    table = calibrate(TARGET, cache_path=tmp_path / "t.json", progress=lines.append, **GRID)
    assert table.machine == machine_key()
    assert set(table.sparse) == {"bsr_matmul[4x1]"} and set(table.sparse["bsr_matmul[4x1]"][8]) == {
        0.2,
        0.4,
    }
    assert all(rate > 0 for rate in table.dense.values())
    assert len([line for line in lines if line.startswith("calibrating")]) == 3
    loaded = load_calibration(TARGET, cache_path=tmp_path / "t.json")
    assert loaded == table and loaded.evidence.startswith("calibrated (")
    assert not (tmp_path / "t.json.partial.json").exists()


def test_a_killed_calibration_resumes_where_it_stopped(tmp_path, monkeypatch):
    measure_bsr = kernel_timing.measure_bsr
    calls = []

    def dies_at_the_second(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return measure_bsr(*args, **kwargs)

    monkeypatch.setattr(kernel_timing, "measure_bsr", dies_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        calibrate(TARGET, cache_path=tmp_path / "t.json", progress=False, **GRID)
    record = json.loads((tmp_path / "t.json.partial.json").read_text())
    assert len(record["rates"]) == 2  # dense and the first density
    calls.clear()
    monkeypatch.setattr(
        kernel_timing, "measure_dense", lambda *a, **kw: pytest.fail("measured again")
    )
    monkeypatch.setattr(kernel_timing, "measure_bsr", lambda *a, **kw: calls.append(a) or 1.0)
    table = calibrate(TARGET, cache_path=tmp_path / "t.json", progress=False, **GRID)
    assert [a[-1] for a in calls] == [0.4]  # only the point the killed run had not measured
    assert table.sparse["bsr_matmul[4x1]"][8][0.4] == 1.0
    assert not (tmp_path / "t.json.partial.json").exists()


def test_a_table_of_another_machine_is_not_evidence_here(tmp_path):
    table = calibrate(TARGET, cache_path=tmp_path / "t.json", progress=False, save=False, **GRID)
    table.machine = "znver9|Some Other CPU|64"
    table.save(tmp_path / "t.json")
    with pytest.warns(CalibrationWarning, match="measured on znver9"):
        loaded = load_calibration(TARGET, cache_path=tmp_path / "t.json")
    assert not loaded.machine  # the shipped table stands in


def test_the_cache_path_changes_with_the_machine(monkeypatch):
    here = default_cache_path(TARGET)
    monkeypatch.setattr(cost_model, "machine_key", lambda: "other|cpu|2")
    assert default_cache_path(TARGET) != here
    assert here.name.startswith("x86_")


def test_calibrate_refuses_a_target_this_machine_does_not_run():
    with pytest.raises(ValueError, match="cannot run .* rpc='HOST:PORT'"):
        calibrate(get_preset("arm-cortex-a72").tvm_target(), progress=False, **GRID)
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        calibrate("arm-cortex-a72", rpc="board", progress=False, **GRID)


def test_an_arm_compile_says_its_table_is_not_the_devices():
    arm = get_preset("arm-cortex-a72").tvm_target()
    assert cost_model.host_class(arm) == "arm_neon"
    table = load_calibration(arm)
    assert table.evidence.startswith("estimated (Arm table estimated from llvm-mca")
    assert "rpc='HOST:PORT'" in table.evidence
    # a board's table is stored for the target that describes it, apart from this machine's
    assert default_cache_path(arm).name.startswith("arm_neon-")
    assert default_cache_path(arm) != default_cache_path(get_preset("arm-cortex-a76").tvm_target())


def test_first_use_measures_once(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(calibrate_host, "QUICK_GRID", {k: v for k, v in GRID.items()
                                                       if k not in ("n", "k")})  # fmt: skip
    first = calibrate_on_first_use(TARGET, progress=False)
    assert first is not None and default_cache_path(TARGET).is_file()
    assert calibrate_on_first_use(TARGET, progress=False) is None
    assert calibrate_on_first_use(get_preset("arm-cortex-a72").tvm_target()) is None
