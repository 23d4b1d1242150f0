"""Helpers for the CPU schedule-rule tests: build a Relax module from a torch module, run
the fusion pipeline, schedule it with given rules, compile and compare against PyTorch."""

from __future__ import annotations

import numpy as np
import torch
import tvm
from tvm import relax, s_tir, tirx

from tvm_sparse.schedules.cpu.base import iter_stmts, vector_lanes
from tvm_sparse.targets import get_preset

TARGET = get_preset("x86").tvm_target()  # the host CPU: tests run the code they build
LANES = vector_lanes(TARGET)  # fp32 lanes of its vectors: 16 with AVX-512, 8 with AVX2

FUSION = [
    relax.transform.DecomposeOpsForInference(),
    relax.transform.LegalizeOps(),
    relax.transform.AnnotateTIROpPattern(),
    relax.transform.FoldConstant(),
    relax.transform.FuseOps(),
    relax.transform.FuseTIR(),
]


def to_fused_relax(
    model: torch.nn.Module, *inputs: torch.Tensor, nhwc: bool = False
) -> tvm.IRModule:
    """The fused PrimFuncs of ``model``; ``nhwc`` converts convolutions as the pipeline does."""
    from tvm.relax.frontend.torch import from_exported_program

    from tvm_sparse.passes import ConvertToNHWC

    model.eval()
    with torch.no_grad():
        exported = torch.export.export(model, inputs)
    mod = from_exported_program(exported, keep_params_as_input=False)
    if nhwc:
        mod = tvm.transform.Sequential(
            [relax.transform.DecomposeOpsForInference(), ConvertToNHWC(min_convs=1)]
        )(mod)
    return tvm.transform.Sequential(FUSION)(mod)


def claim(mod: tvm.IRModule, rules, target=TARGET) -> tuple[tvm.IRModule, dict[str, str]]:
    """Schedule every PrimFunc with the first rule that accepts it; name -> rule class name."""
    claimed = {}
    for gv, func in list(mod.functions_items()):
        if not isinstance(func, tirx.PrimFunc):
            continue
        for rule in rules:
            sch = rule.apply(func, target, False)
            if sch is not None:
                claimed[gv.name_hint] = type(rule).__name__
                mod[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
                break
    return mod, claimed


def loop_kinds(func: tirx.PrimFunc) -> set:
    return {node.kind for node in iter_stmts(func.body) if isinstance(node, tirx.For)}


def parallel_blocks(func: tirx.PrimFunc) -> list[dict[str, s_tir.SBlock]]:
    """The blocks under each parallel loop of ``func``, by name: what one of its tasks runs."""
    return [
        {b.name_hint: b for b in iter_stmts(loop.body) if isinstance(b, s_tir.SBlock)}
        for loop in iter_stmts(func.body)
        if isinstance(loop, tirx.For) and loop.kind == tirx.ForKind.PARALLEL
    ]


def assert_parallel_vectorized(func: tirx.PrimFunc, *, vectorized: bool = True) -> None:
    kinds = loop_kinds(func)
    assert tirx.ForKind.PARALLEL in kinds, func.script()
    if vectorized:
        assert tirx.ForKind.VECTORIZED in kinds, func.script()


def run_and_compare(model, inputs, rules, *, rtol=1e-4, atol=1e-5, target=TARGET, nhwc=False):
    """Schedule, compile, run and compare with PyTorch; return the claimed map and the module."""
    mod, claimed = claim(to_fused_relax(model, *inputs, nhwc=nhwc), rules, target)
    vm = relax.VirtualMachine(tvm.compile(mod, target), tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(x.numpy()) for x in inputs])
    while not hasattr(out, "numpy"):
        out = out[0]
    with torch.no_grad():
        ref = model(*inputs).numpy()
    np.testing.assert_allclose(out.numpy(), ref, rtol=rtol, atol=atol * max(1.0, np.abs(ref).max()))
    return claimed, mod


def schedule_func(rule, func: tirx.PrimFunc, target=TARGET) -> s_tir.Schedule | None:
    return rule.apply(func, target, False)
