"""The backend of a target family: chosen once from the target's kind."""

from __future__ import annotations

import dataclasses

import pytest
import tvm

from tvm_sparse import schedules
from tvm_sparse.passes import rewrite_to_sparse
from tvm_sparse.pipeline import _FAMILY_PASSES, _LOWERING
from tvm_sparse.targets import backend_of, get_preset, presets
from tvm_sparse.targets.backend import CPU, CUDA


@pytest.mark.parametrize(
    ("preset", "backend"), [("x86-avx2", CPU), ("arm-cortex-a72", CPU), ("jetson-orin-nano", CUDA)]
)
def test_presets_pick_their_family(preset, backend):
    target = get_preset(preset).tvm_target()
    assert backend_of(target) is backend
    assert tvm.device(backend.device, 0) == (tvm.cuda(0) if backend is CUDA else tvm.cpu(0))


def test_other_kinds_raise_or_give_none():
    with pytest.raises(ValueError, match=r"unsupported target kind 'c'.*'llvm'.*'cuda'"):
        backend_of(tvm.target.Target("c"))
    assert backend_of(tvm.target.Target("c"), allow_none=True) is None
    assert backend_of(None, allow_none=True) is None


def test_families_differ_where_the_compiler_does():
    cpu = get_preset("x86-avx512").tvm_target()
    assert CPU.winograd and not CUDA.winograd
    assert CPU.channel_multiple(cpu) == 16 and CUDA.channel_multiple(cpu) == 1
    assert _FAMILY_PASSES["cuda"](cpu, None, True) == []
    assert [type(p).__name__ for p in _FAMILY_PASSES["cpu"](cpu, None, False)] == [
        "PadAttentionTokens",
        "ConvertToNHWC",
    ]


def test_every_layer_has_every_family():
    """Each layer's table of family pieces covers every backend: a new family cannot be half
    wired."""
    families = {CPU.family, CUDA.family}
    tables = [
        schedules._RULES,
        _FAMILY_PASSES,
        _LOWERING,
        rewrite_to_sparse._CHOOSERS,
        rewrite_to_sparse._KERNELS,
    ]
    for table in tables:
        assert set(table) == families


def test_get_preset_keeps_extra(monkeypatch):
    host = dataclasses.replace(get_preset("x86"), name="x86-extra", target=None, extra={"k": 1})
    monkeypatch.setitem(presets._PRESETS, host.name, host)  # a host preset, detected when asked
    preset = get_preset("x86-extra")
    assert preset.extra == {"k": 1} and preset.tvm_target().kind.name == "llvm"
