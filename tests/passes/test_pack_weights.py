"""PackWeights: the weight layout rewrites of the Conv2d and Matmul rules move to compile time."""

import numpy as np
import pytest
import torch
import tvm
from schedule_testing import FUSION
from tvm import relax, tirx

from tvm_sparse.passes.pack_weights import PackWeights, _rewrites_layout
from tvm_sparse.schedules import ApplySchedules, schedule_rules
from tvm_sparse.targets import get_preset

TARGET = get_preset("x86").tvm_target()


def _scheduled(model: torch.nn.Module, x: torch.Tensor) -> tvm.IRModule:
    from tvm.relax.frontend.torch import from_exported_program

    with torch.no_grad():
        mod = from_exported_program(torch.export.export(model.eval(), (x,)))
    passes = [*FUSION, ApplySchedules(schedule_rules(TARGET))]
    with TARGET:
        return tvm.transform.Sequential(passes)(mod)


def _prim_funcs(mod: tvm.IRModule) -> list[tirx.PrimFunc]:
    return [f for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]


def _run(mod: tvm.IRModule, x: torch.Tensor) -> np.ndarray:
    vm = relax.VirtualMachine(tvm.compile(mod, TARGET), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x.numpy()))
    while not hasattr(out, "numpy"):
        out = out[0]
    return out.numpy()


@pytest.mark.parametrize(
    "model,shape",
    [
        (
            torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU()),
            (1, 16, 9, 9),
        ),
        (torch.nn.Sequential(torch.nn.Linear(40, 192), torch.nn.GELU()), (6, 40)),
    ],
    ids=["conv2d", "linear"],
)
def test_packing_is_folded_into_constants(model, shape):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    before = _scheduled(model, x)
    assert any(_rewrites_layout(f) for f in _prim_funcs(before))
    with TARGET:
        after = PackWeights()(before)
    assert not any(_rewrites_layout(f) for f in _prim_funcs(after))
    assert len(_prim_funcs(after)) == len(_prim_funcs(before))  # the packing function is gone
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(_run(after, x), expected, rtol=1e-4, atol=1e-4)
    # without the pass the kernels pack on every call, with the same result
    np.testing.assert_allclose(_run(before, x), expected, rtol=1e-4, atol=1e-4)


def test_module_without_layout_rewrites_is_unchanged():
    x = torch.randn(1, 8, 6, 6)
    mod = _scheduled(torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)), x)
    with TARGET:
        after = PackWeights()(mod)
    tvm.ir.assert_structural_equal(after, mod)
