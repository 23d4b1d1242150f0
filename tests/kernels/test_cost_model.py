import json

import pytest

from tvm_sparse.kernels import Calibration, CalibrationWarning, load_calibration
from tvm_sparse.targets import get_preset

TARGET = get_preset("x86").tvm_target()  # the host CPU: tests run the code they build


def test_shipped_table_loads_and_estimates(tmp_path):
    table = load_calibration(TARGET, cache_path=tmp_path / "missing.json")
    assert table.has_kernel("bsr_matmul[16x1]")
    est = table.estimate("bsr_matmul[16x1]", 128, 3072, 768, 3072 * 768 // 10, 0.1)
    assert est.speedup > 1


def test_cache_file_round_trip(tmp_path):
    table = Calibration(
        host="x", dense={1: 10.0, 128: 100.0}, sparse={"bsr_matmul[1x1]": {1: {0.1: 1.0, 0.5: 3.0}}}
    )
    path = tmp_path / "cal.json"
    table.save(path)
    loaded = load_calibration(TARGET, cache_path=path)
    assert loaded.sparse == table.sparse
    # Interpolation: density halfway, log2(M) between buckets.
    assert loaded.sparse_seconds("bsr_matmul[1x1]", 1, 1000, 0.3) == 2 * 1000 / 2.0e9
    rate = 10.0 + 90.0 * 3 / 7  # log2(8) is 3/7 of the way from log2(1) to log2(128)
    assert abs(loaded.dense_seconds(8, 1, 1) - 16 / (rate * 1e9)) < 1e-15


def test_saved_table_carries_its_format_version(tmp_path):
    path = tmp_path / "cal.json"
    Calibration(host="x", dense={1: 10.0}).save(path)
    assert json.loads(path.read_text())["format_version"] == 1


@pytest.mark.parametrize(
    "text, says",
    [
        ('{"host": "x", "dense": {"1": 1', "JSONDecodeError"),  # torn write
        ('{"format_version": 2, "host": "x", "dense": {"1": 1.0}, "sparse": {}}', "version 2"),
        ('{"host": "x", "dense": {"1": 0.0}, "sparse": {}}', "rate 0.0"),  # divides by it
        ('{"host": "x", "dense": {"1": 1.0}, "sparse": {"nm_matmul[2:4]": {}}}', "without"),
        ('{"host": "x", "dense": {"1": 1.0}, "sparse": {"k": {"1": {"1.5": 1.0}}}}', "1.5"),
        ('["not", "a", "table"]', "TypeError"),
        ("", "JSONDecodeError"),
    ],
)
def test_unusable_cache_file_falls_back_to_the_shipped_table(tmp_path, text, says):
    shipped = load_calibration(TARGET, cache_path=tmp_path / "missing.json")
    path = tmp_path / "cal.json"
    path.write_text(text)
    with pytest.warns(CalibrationWarning, match=says) as caught:
        table = load_calibration(TARGET, cache_path=path)
    assert str(path) in str(caught[0].message)
    assert table == shipped


def test_default_table_is_read_from_the_test_session_cache(tmp_path):
    """With no table under $XDG_CACHE_HOME (the session's temporary one), the shipped one."""
    from tvm_sparse.kernels import default_cache_path

    assert not default_cache_path(TARGET).exists()
    assert load_calibration(TARGET) == load_calibration(TARGET, cache_path=tmp_path / "none")


@pytest.mark.parametrize(
    "preset, says",
    [
        ("x86-avx512", "calibrated for the host class (shipped x86_avx512 table"),
        ("x86-avx2", "uncalibrated: no x86_avx2 table, the x86_avx512 table stands in"),
        ("arm-cortex-a72", "estimated (Arm table estimated from llvm-mca"),
        ("jetson-orin-nano", "cuda targets are not calibrated"),
    ],
)
def test_every_table_says_whether_it_fits_the_target(tmp_path, preset, says):
    table = load_calibration(get_preset(preset).tvm_target(), cache_path=tmp_path / "none.json")
    assert says in table.evidence


def test_a_measured_table_is_calibrated(tmp_path):
    target = get_preset("x86-avx2").tvm_target()
    shipped = load_calibration(target, cache_path=tmp_path / "none.json")
    measured = Calibration(host="x86_avx2", dense=shipped.dense, sparse=shipped.sparse)
    measured.save(tmp_path / "x86_avx2.json")
    table = load_calibration(target, cache_path=tmp_path / "x86_avx2.json")
    assert table.evidence.startswith("calibrated (x86_avx2 table measured by calibrate")


def test_decisions_name_their_evidence():
    import numpy as np
    import torch

    import tvm_sparse
    from tvm_sparse.measure import block_mask

    linear = torch.nn.Linear(256, 512, bias=False)
    mask = block_mask(512, 256, (16, 1), 0.1, np.random.default_rng(0))
    with torch.no_grad():
        linear.weight.mul_(torch.from_numpy(mask.astype("float32")))
    x = torch.randn(16, 256)
    compiled = tvm_sparse.compile(linear.eval(), "x86-avx2", example_inputs=(x,))
    (row,) = [r for r in compiled.report.rows if r.pattern != "dense"]
    assert "uncalibrated" in row.reason or "calibrated (" in row.reason, row.reason
