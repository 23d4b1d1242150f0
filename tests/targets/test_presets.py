"""Target presets: data, TVM tags reused, clear errors."""

from __future__ import annotations

import pytest
import tvm

from tvm_sparse.targets import get_preset, list_presets, resolve_target

EXPECTED = [
    "arm-cortex-a72",
    "arm-cortex-a76",
    "arm-neoverse-n1",
    "jetson-agx-orin",
    "jetson-orin-nano",
    "jetson-xavier-nx",
    "x86",
    "x86-avx2",
    "x86-avx512",
]


def test_all_presets_build_tvm_targets():
    assert list_presets() == EXPECTED
    for name in EXPECTED:
        assert isinstance(get_preset(name).tvm_target(), tvm.target.Target)


def test_host_preset_detects_the_cpu():
    target = get_preset("x86").tvm_target()
    assert str(target.attrs["mcpu"]) == tvm.target.codegen.llvm_get_system_cpu()
    assert int(target.attrs["num-cores"]) >= 1


@pytest.mark.parametrize(
    ("name", "pattern", "arch"),
    [("jetson-orin-nano", "n:m", "sm_87"), ("jetson-agx-orin", "n:m", "sm_87"),
     ("jetson-xavier-nx", "channel", "sm_72")],
)  # fmt: skip
def test_jetson_presets(name, pattern, arch):
    preset = get_preset(name)
    target = preset.tvm_target()
    assert target.kind.name == "cuda" and str(target.attrs["arch"]) == arch
    assert "aarch64" in str(target.host.attrs["mtriple"])
    assert preset.pruning.pattern == pattern
    assert preset.cross_compiler == "aarch64-linux-gnu-g++"


def test_arm_presets_cross_compile():
    for name in ("arm-cortex-a72", "arm-cortex-a76", "arm-neoverse-n1"):
        preset = get_preset(name)
        target = preset.tvm_target()
        assert str(target.attrs["mtriple"]) == "aarch64-linux-gnu"
        assert preset.cross_compiler == "aarch64-linux-gnu-g++"
        assert preset.pruning.pattern == "block"


def test_unknown_name_lists_presets():
    with pytest.raises(ValueError, match="choose one of arm-cortex-a72"):
        get_preset("x86-avx1024")


def test_target_objects_and_dicts():
    preset = resolve_target({"kind": "llvm", "mcpu": "znver4", "num-cores": 2})
    assert preset.name == "custom" and preset.pruning.pattern == "block"
    ampere = resolve_target(tvm.target.Target({"kind": "cuda", "arch": "sm_86"}))
    assert ampere.pruning.pattern == "n:m" and ampere.pruning.n_m == (2, 4)
    arm = resolve_target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
    assert arm.cross_compiler == "aarch64-linux-gnu-g++"


def test_unsupported_kind():
    with pytest.raises(ValueError, match="unsupported target kind 'c'"):
        resolve_target({"kind": "c"})


def test_malformed_dict():
    with pytest.raises(ValueError, match="invalid target dict"):
        resolve_target({"kind": "no-such-kind"})
