"""The Arm calibration tables estimated from llvm-mca: their generator, the shipped tables, and
a measured table taking their place."""

from __future__ import annotations

import json

import pytest

import tvm_sparse
from tests import zoo
from tvm_sparse.kernels import Calibration, default_cache_path, load_calibration
from tvm_sparse.kernels.cost_model import package_table_path
from tvm_sparse.measure.predicted_table import ARM_PRESETS, predict_calibration
from tvm_sparse.static_throughput import find_llvm_mca
from tvm_sparse.targets import get_preset

ESTIMATED = "estimated (Arm table estimated from llvm-mca"


def _grid(table: Calibration) -> tuple:
    return (
        sorted(table.dense),
        {key: {m: sorted(by_d) for m, by_d in by_m.items()} for key, by_m in table.sparse.items()},
    )


@pytest.mark.skipif(find_llvm_mca() is None, reason="llvm-mca is not installed")
def test_the_prediction_is_an_estimated_table_of_the_cores_rates():
    lines = []
    table = predict_calibration(
        "arm-cortex-a76",
        ms=(16,),
        blocks=((8, 1),),
        densities=(0.05, 0.2),
        nm=(),
        progress=lines.append,
    )
    assert table.estimated and table.host == "arm_neon" and "neoverse-n1" in table.source
    assert len(lines) == 2
    # 4 cores x 2.4 GHz x 16 FLOPs a cycle (two 4-lane FMAs) is the most the core model allows
    rates = [table.dense[16], *table.sparse["bsr_matmul[8x1]"][16].values()]
    assert all(0 < rate <= 4 * 2.4 * 16 * 1.01 for rate in rates), rates
    # the hot loop does not change with density: one prediction fills every density
    assert len(set(table.sparse["bsr_matmul[8x1]"][16].values())) == 1
    again = Calibration.from_json(json.loads(json.dumps(table.to_json())))
    assert again.estimated and again == table


@pytest.mark.parametrize("preset", ARM_PRESETS)
def test_each_arm_preset_ships_an_estimated_table_on_the_x86_tables_grid(preset, tmp_path):
    target = get_preset(preset).tvm_target()
    assert package_table_path(target).is_file()
    table = load_calibration(target, cache_path=tmp_path / "none.json")
    assert table.estimated and table.host == "arm_neon"
    assert table.evidence.startswith(ESTIMATED) and "rpc='HOST:PORT'" in table.evidence
    x86 = load_calibration(get_preset("x86-avx512").tvm_target(), cache_path=tmp_path / "n.json")
    assert _grid(table) == _grid(x86)


def test_an_arm_core_without_a_table_still_says_uncalibrated(tmp_path):
    a55 = tvm_sparse.targets.resolve_target(
        {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a55"}
    ).tvm_target()
    table = load_calibration(a55, cache_path=tmp_path / "none.json")
    assert not table.estimated
    assert table.evidence.startswith("uncalibrated: no arm_neon table")


def test_arm_decisions_say_estimated_until_the_board_measures_a_table(tmp_path, monkeypatch):
    # Cross-compiled only: the Arm build runs over RPC in tests/test_arm_rpc.py, numerics included
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model, (x,) = zoo.make("mlp")
    tvm_sparse.prune(model, (x,), pattern="block", block_shape=(8, 1), sparsity=0.9)

    def decided():
        compiled = tvm_sparse.compile(model, "arm-cortex-a76", example_inputs=(x,))
        rows = [r for r in compiled.report.rows if "density" in r.reason]
        assert rows, str(compiled.report)
        return rows

    assert all(ESTIMATED in r.reason for r in decided())
    # a table measured over RPC (here written by hand) takes the shipped one's place
    arm = get_preset("arm-cortex-a76").tvm_target()
    shipped = load_calibration(arm)
    measured = Calibration(host="arm_neon", dense=shipped.dense, sparse=shipped.sparse,
                           source=f"measured on {arm}", machine="the rpc device")  # fmt: skip
    measured.save(default_cache_path(arm))
    rows = decided()
    assert all("calibrated (arm_neon table measured by calibrate" in r.reason for r in rows)
    assert not any("estimated" in r.reason for r in rows)
