"""Search spaces: recovering a sparse kernel's generator arguments and its knob candidates."""

from __future__ import annotations

import pytest

from tvm_sparse.kernels import BSRMatmulKnobs, NMMatmulKnobs, bsr_matmul, nm_matmul
from tvm_sparse.tune.space import _knobs_of, sparse_candidates, sparse_spec


def _bsr(target, m, k, n, block, **layout):
    knobs = BSRMatmulKnobs.for_target(target).resolve(block, m, **layout)
    rows = -(-n // block[0])
    rows = -(-rows // knobs.group) * knobs.group
    return bsr_matmul(m, k, n, block, 40, rows, knobs=knobs, **layout)


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
def test_bsr_spec_is_recovered_and_candidates_keep_the_signature(target, m, k, n, block, layout):
    func = _bsr(target, m, k, n, block, **layout)
    spec = sparse_spec(func)
    assert spec is not None and (spec.m, spec.k, spec.n) == (m, k, n)
    assert spec.x_layout == layout.get("x_layout", "MK")
    candidates = sparse_candidates(spec, _knobs_of(func), target)
    assert candidates[0] == _knobs_of(func)  # the default is measured first
    assert len({str(sorted(c.items())) for c in candidates}) == len(candidates)
    shapes = [tuple(p.ty.shape) for p in func.params]
    for knobs in candidates:
        built = spec.build(knobs)
        assert [tuple(p.ty.shape) for p in built.params] == shapes


def test_nm_spec_and_candidates(target):
    knobs = NMMatmulKnobs.for_target(target).resolve(32)
    func = nm_matmul(32, 64, 96, (2, 4), 96, knobs=knobs)
    spec = sparse_spec(func)
    assert spec.kernel == "nm" and spec.pattern == (2, 4)
    assert len(sparse_candidates(spec, _knobs_of(func), target)) > 1


def test_foreign_or_dense_funcs_have_no_spec(target):
    func = _bsr(target, 32, 64, 96, (16, 1))
    assert sparse_spec(func.without_attr("tvm_sparse.knobs")) is None
    # knobs that do not describe the body: regeneration does not reproduce it
    wrong = func.with_attr("tvm_sparse.knobs", {**_knobs_of(func), "m_tile": 3})
    assert sparse_spec(wrong) is None
