"""Host detection: a target runs here only if this CPU has every feature its code needs."""

from __future__ import annotations

import pytest
from tvm.target import Target, codegen

from tvm_sparse.targets import (
    get_preset,
    host_cpu_features,
    is_host_target,
    missing_host_features,
)
from tvm_sparse.targets import host as host_module

x86_only = pytest.mark.skipif(
    host_module.host_arch() != "x86_64", reason="x86 presets and CPU names"
)


@pytest.fixture
def fresh_caches():
    """Clear the per-target and host caches around a test that fakes the host."""

    def clear():
        host_module._cache.clear()
        host_module.host_cpu_features.cache_clear()
        host_module._cpuinfo_flags.cache_clear()

    clear()
    yield
    clear()


def _system_cpu_target(**extra) -> Target:
    return Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), **extra})


def test_host_cpu_runs_here():
    assert missing_host_features(_system_cpu_target()) == []
    assert missing_host_features(Target({"kind": "llvm"})) == []  # generic CPU
    assert is_host_target(_system_cpu_target())


@x86_only
def test_host_presets_report_nothing():
    assert missing_host_features(get_preset("x86").tvm_target()) == []
    assert is_host_target(get_preset("x86").tvm_target())
    if "avx2" in host_cpu_features() and "fma" in host_cpu_features():
        assert missing_host_features(get_preset("x86-avx2").tvm_target()) == []


@x86_only
def test_host_features_are_codegen_features_only():
    features = host_cpu_features()
    assert "sse2" in features
    assert not any(f.startswith(("fast-", "slow-", "tuning-")) for f in features)


@x86_only
def test_newer_cpu_reports_what_the_host_lacks():
    if "amx-tile" in host_cpu_features():
        pytest.skip("this host has AMX")
    target = Target({"kind": "llvm", "mcpu": "sapphirerapids"})
    missing = missing_host_features(target)
    assert "amx-tile" in missing
    assert missing == sorted(missing)
    assert not set(missing) & host_cpu_features()
    assert not is_host_target(target)


@x86_only
def test_mattr_counts():
    if "amx-tile" in host_cpu_features():
        pytest.skip("this host has AMX")
    target = _system_cpu_target(mattr=["+amx-tile"])
    assert missing_host_features(target) == ["amx-tile"]
    assert not is_host_target(target)


@x86_only
def test_avx512_preset_matches_the_host():
    missing = missing_host_features(get_preset("x86-avx512").tvm_target())
    if "avx512f" in host_cpu_features():
        assert "avx512f" not in missing
    else:
        assert "avx512f" in missing and "avx512bw" in missing
        assert not is_host_target(get_preset("x86-avx512").tvm_target())


def test_other_architecture_is_not_host():
    foreign = "aarch64" if host_module.host_arch() != "aarch64" else "x86_64"
    target = Target({"kind": "llvm", "mtriple": f"{foreign}-linux-gnu"})
    assert missing_host_features(target) == [foreign]
    assert not is_host_target(target)


@x86_only
def test_arm_presets_are_not_host():
    for name in ("arm-cortex-a72", "arm-cortex-a76", "arm-neoverse-n1"):
        assert missing_host_features(get_preset(name).tvm_target()) == ["aarch64"]
        assert not is_host_target(get_preset(name).tvm_target())


def test_gpu_targets_are_not_host():
    target = get_preset("jetson-orin-nano").tvm_target()
    assert missing_host_features(target) == ["cuda"]
    assert not is_host_target(target)
    assert not is_host_target(Target({"kind": "cuda", "arch": "sm_86"}))


def test_result_is_cached_and_a_copy():
    target = Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"})
    first = missing_host_features(target)
    first.append("mutated")
    assert "mutated" not in missing_host_features(target)
    assert str(target) in host_module._cache


@x86_only
def test_features_hidden_by_the_kernel_are_missing(fresh_caches, monkeypatch):
    """A VM can hide features of the CPU model LLVM detects; /proc/cpuinfo has the last word."""
    if "avx2" not in host_cpu_features():
        pytest.skip("this host has no AVX2 to hide")
    flags = host_module._cpuinfo_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo")
    host_module._cache.clear()
    host_module.host_cpu_features.cache_clear()
    monkeypatch.setattr(host_module, "_cpuinfo_flags", lambda: flags - {"avx2"})
    assert missing_host_features(_system_cpu_target()) == ["avx2"]
    assert not is_host_target(get_preset("x86").tvm_target())


def test_cpuinfo_names():
    flags = frozenset({"pni", "bmi1", "abm", "sse41", "avx512vnni", "amxtile", "asimd"})
    for feature in ("sse3", "bmi", "lzcnt", "sse4.1", "avx512vnni", "amx-tile", "neon", "evex512"):
        assert host_module._kernel_reports(feature, flags), feature
    assert not host_module._kernel_reports("avx2", flags)
