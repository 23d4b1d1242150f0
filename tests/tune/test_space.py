"""Search spaces: recovering a sparse kernel's generator arguments and its knob candidates."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tvm

from tvm_sparse.kernels import BSRMatmulKnobs, NMMatmulKnobs, bsr_matmul, nm_matmul
from tvm_sparse.kernels.epilogue import PLAIN, Epilogue
from tvm_sparse.kernels.nm_permute import NMPermuteKnobs, nm_permute
from tvm_sparse.tune.space import _knobs_of, sparse_candidates, sparse_spec


def _bsr(target, m, k, n, block, epilogue=PLAIN, **layout):
    knobs = BSRMatmulKnobs.for_target(target).resolve(block, m, n, **layout)
    rows = -(-n // block[0])
    rows = -(-rows // knobs.group) * knobs.group
    return bsr_matmul(m, k, n, block, 40, rows, knobs=knobs, epilogue=epilogue, **layout)


@pytest.mark.parametrize("epilogue", [PLAIN, Epilogue(bias=True, activation="relax.nn.gelu")])
@pytest.mark.parametrize(
    ("m", "k", "n", "block", "layout"),
    [
        (32, 64, 96, (16, 1), {}),
        (1, 64, 96, (4, 1), {}),
        (32, 64, 96, (4, 1), {}),
        (49, 64, 96, (4, 1), {"batch": 2, "x_layout": "KM", "y_layout": "NM"}),
        (64, 64, 64, (4, 1), {"batch": 2, "x_layout": "KM", "y_layout": "NM"}),
    ],
    ids=["rows", "gemv-like", "m", "conv-KM-NM", "square-conv"],
)
def test_bsr_spec_is_recovered_and_candidates_keep_the_signature(
    target, m, k, n, block, layout, epilogue
):
    func = _bsr(target, m, k, n, block, epilogue, **layout)
    spec = sparse_spec(func)
    assert spec is not None and (spec.m, spec.k, spec.n) == (m, k, n)
    assert Epilogue.from_attr(spec.epilogue) == epilogue
    assert spec.x_layout == layout.get("x_layout", "MK")
    candidates = sparse_candidates(spec, _knobs_of(func), target)
    assert candidates[0] == _knobs_of(func)  # the default is measured first
    assert len({str(sorted(c.items())) for c in candidates}) == len(candidates)
    shapes = [tuple(p.ty.shape) for p in func.params]
    for knobs in candidates:
        built = spec.build(knobs)
        assert [tuple(p.ty.shape) for p in built.params] == shapes


@pytest.mark.parametrize("epilogue", [PLAIN, Epilogue(bias=True, activation="relax.nn.relu")])
def test_nm_spec_and_candidates(target, epilogue):
    knobs = NMMatmulKnobs.for_target(target).resolve(32)
    func = nm_matmul(32, 64, 96, (2, 4), 96, knobs=knobs, epilogue=epilogue)
    spec = sparse_spec(func)
    assert spec.kernel == "nm" and spec.pattern == (2, 4)
    assert Epilogue.from_attr(spec.epilogue) == epilogue
    candidates = sparse_candidates(spec, _knobs_of(func), target)
    assert len(candidates) > 1
    shapes = [tuple(p.ty.shape) for p in func.params]
    for cand in candidates:  # the weight's layout (group, k tile) stays
        assert [tuple(p.ty.shape) for p in spec.build(cand).params] == shapes


@pytest.mark.parametrize("epilogue", [PLAIN, Epilogue(bias=True, activation="relax.nn.relu")])
def test_nm_permute_spec_and_candidates_keep_the_weight_layout(epilogue):
    x86 = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})
    knobs = NMPermuteKnobs.for_target(x86)
    func = nm_permute(32, 64, 96, (2, 4), knobs=knobs, epilogue=epilogue)
    spec = sparse_spec(func)
    assert spec.kernel == "nm_permute" and spec.pattern == (2, 4)
    assert Epilogue.from_attr(spec.epilogue) == epilogue
    candidates = sparse_candidates(spec, _knobs_of(func), x86)
    assert {c["rows"] for c in candidates} >= {4, 8, 12}
    shapes = [tuple(p.ty.shape) for p in func.params]
    for cand in candidates:
        assert [tuple(p.ty.shape) for p in spec.build(cand).params] == shapes


def test_foreign_or_dense_funcs_have_no_spec(target):
    func = _bsr(target, 32, 64, 96, (16, 1))
    assert sparse_spec(func.without_attr("tvm_sparse.knobs")) is None
    # knobs that do not describe the body: regeneration does not reproduce it
    wrong = func.with_attr("tvm_sparse.knobs", {**_knobs_of(func), "m_tile": 3})
    assert sparse_spec(wrong) is None


def _matmul_func():
    from tvm import te

    a, b = te.placeholder((16, 64), name="a"), te.placeholder((64, 32), name="b")
    k = te.reduce_axis((0, 64), name="k")
    c = te.compute((16, 32), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="matmul")
    return te.create_prim_func([a, b, c])


def test_rule_space_starts_at_the_default_and_replays_each_point(target):
    import tvm
    import tvm_ffi
    from tvm import s_tir

    from tvm_sparse.schedules import ApplySchedules, schedule_rules
    from tvm_sparse.tune.space import rule_space, tunable_rule

    func = _matmul_func()
    rule = tunable_rule(func, target)
    assert type(rule).__name__ == "Matmul"
    points = rule_space(rule, func, target)
    default = ApplySchedules(schedule_rules(target))._schedule(func, target)
    assert tvm_ffi.structural_equal(
        points[0].sch.mod["main"].with_attr("tirx.is_scheduled", True),
        default.without_attr("tvm_sparse.kernel"),
    )
    assert not any(points[0].decisions) and len(points) > 10
    knobs = {json.dumps(p.knobs, sort_keys=True) for p in points}
    assert len(knobs) == len(points)  # one point per knob set
    hashes = {tvm_ffi.structural_hash(p.sch.mod) for p in points}
    assert len(hashes) == len(points)  # and they are different schedules
    for point in points[:: max(len(points) // 8, 1)]:
        sch, _ = rule.sample(func, target, point.decisions)
        tvm.ir.assert_structural_equal(sch.mod, point.sch.mod)
        # what MetaSchedule keeps of the design space (its simplified trace) replays to it
        trace = point.sch.trace.simplified(remove_postproc=True)
        assert not any(i.kind.name == "SampleCategorical" for i in trace.insts)
        again = s_tir.Schedule(func)
        trace.apply_to_schedule(again, remove_postproc=True)
        tvm.ir.assert_structural_equal(again.mod, point.sch.mod)
    assert len(rule_space(rule, func, target, limit=5)) == 5


def test_ops_without_a_knob_rule_have_no_rule_space(target):
    from tvm import te

    from tvm_sparse.tune.space import tunable_rule

    x = te.placeholder((8, 32), name="x")
    k = te.reduce_axis((0, 32), name="k")
    row_max = te.compute((8,), lambda i: te.max(x[i, k], axis=k), name="row_max")
    assert tunable_rule(te.create_prim_func([x, row_max]), target) is None


def test_cuda_kernels_of_the_same_names_have_no_spec():
    """The CUDA N:M kernel takes ``(1, M, K)``: reading it as the CPU one's ``(M, K)`` raised
    ``ValueError: too many values to unpack`` in every compile with a non-empty tuning cache."""
    from tvm import relax

    from tvm_sparse.kernels.gpu import CUDATileKnobs, cuda_bsr_matmul, cuda_nm_matmul
    from tvm_sparse.tune.space import sparse_sites

    nm = cuda_nm_matmul(64, 96, 128, (2, 4), 128, knobs=CUDATileKnobs())
    bsr = cuda_bsr_matmul(16, 8, 32, (16, 1), 1, 2, knobs=CUDATileKnobs())
    assert sparse_spec(nm) is None and sparse_spec(bsr) is None

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 64, 96), "float32"))
    with bb.function("main", [x]):
        gvar = bb.add_func(nm, "nm_matmul_2_4")
        values = relax.const(np.zeros((128, 48), "float32"))
        offsets = relax.const(np.zeros((128, 48), "int8"))
        out_ty = relax.TensorType((1, 64, 128), "float32")
        out = bb.emit(relax.call_tir(gvar, (x, values, offsets), out_ty))
        bb.emit_func_output(out)
    skipped = []
    assert sparse_sites(bb.get(), on_skip=lambda name, why: skipped.append((name, why))) == []
    assert [name for name, _ in skipped] == ["nm_matmul_2_4"]
    assert "(1, 64, 96)" in skipped[0][1]
