from tvm_sparse.kernels import Calibration, load_calibration
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
