"""Rules that draw their knobs from a KnobSampler: the default decisions are the default schedule,
other decisions give other schedules that compute the same thing."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
import tvm_ffi
from numpy.lib.stride_tricks import sliding_window_view
from schedule_testing import TARGET, assert_parallel_vectorized
from tvm import s_tir, te, topi

from tvm_sparse.schedules.cpu import (
    GEMV,
    Conv2d,
    Conv2dKnobs,
    KnobDecisionError,
    Matmul,
    MatmulKnobs,
    default_rules,
)
from tvm_sparse.schedules.cpu.gemv import GEMVKnobs


def _matmul():
    a, b = te.placeholder((24, 64), name="a"), te.placeholder((64, 48), name="b")
    bias = te.placeholder((48,), name="bias")
    k = te.reduce_axis((0, 64), name="k")
    c = te.compute((24, 48), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="matmul")
    out = te.compute((24, 48), lambda i, j: c[i, j] + bias[j], name="add")
    return Matmul(), te.create_prim_func([a, b, bias, out]), lambda a, b, bias: a @ b + bias


def _conv2d():
    data, w = te.placeholder((1, 8, 10, 12), name="data"), te.placeholder((16, 8, 3, 3), name="w")
    func = te.create_prim_func([data, w, topi.nn.conv2d_nchw(data, w, 1, 1, 1)])

    def reference(x, w):
        windows = sliding_window_view(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), (3, 3), (2, 3))
        return np.einsum("ncyxhw,fchw->nfyx", windows, w)

    return Conv2d(), func, reference


def _depthwise():
    data, w = te.placeholder((1, 16, 12, 40), name="data"), te.placeholder((16, 1, 3, 3), name="w")
    func = te.create_prim_func([data, w, topi.nn.group_conv2d_nchw(data, w, 1, 1, 1, 16)])

    def reference(x, w):
        windows = sliding_window_view(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), (3, 3), (2, 3))
        return np.einsum("ncyxhw,chw->ncyx", windows, w[:, 0])

    return Conv2d(), func, reference


def _gemv():
    x, w = te.placeholder((1, 96), name="x"), te.placeholder((70, 96), name="w")
    k = te.reduce_axis((0, 96), name="k")
    y = te.compute((1, 70), lambda i, j: te.sum(x[i, k] * w[j, k], axis=k), name="gemv")
    return GEMV(), te.create_prim_func([x, w, y]), lambda x, w: x @ w.T


CASES = {"matmul": _matmul, "conv2d": _conv2d, "depthwise": _depthwise, "gemv": _gemv}
DEFAULTS = {
    "matmul": MatmulKnobs.for_target(TARGET),
    "conv2d": Conv2dKnobs.for_target(TARGET),
    "depthwise": Conv2dKnobs.for_target(TARGET),
    "gemv": GEMVKnobs.for_target(TARGET),
}


def _sample_with(rule, func, values: dict):
    """The rule's schedule with the knobs in ``values`` drawn at those values (``"last"``: the
    last candidate) and the others at their defaults."""
    decisions: list[int] = []
    for _ in range(32):  # which knobs come next depends on the ones before: to a fixed point
        sch, sampler = rule.sample(func, TARGET, decisions)
        wanted = []
        for name, candidates in zip(sampler.names, sampler.candidates, strict=True):
            value = values.get(name, candidates[0])
            wanted.append(len(candidates) - 1 if value == "last" else candidates.index(value))
        if wanted == sampler.taken:
            return sch, sampler
        # fix the first knob that differs; the candidates of later knobs may depend on it
        pairs = zip(wanted, sampler.taken, strict=True)
        first = next(i for i, (w, t) in enumerate(pairs) if w != t)
        decisions = wanted[: first + 1]
    raise AssertionError("decisions did not settle")


def _check_numerics(func, reference):
    lib = tvm.compile(func.with_attr("global_symbol", "main"), TARGET)
    rng = np.random.default_rng(0)
    shapes = [[int(d) for d in p.ty.shape] for p in func.params]
    args = [rng.standard_normal(s).astype("float32") for s in shapes[:-1]]
    out = tvm.runtime.tensor(np.zeros(shapes[-1], "float32"))
    lib["main"](*(tvm.runtime.tensor(a) for a in args), out)
    np.testing.assert_allclose(out.numpy(), reference(*args), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", sorted(CASES))
def test_default_decisions_give_the_default_schedule(case):
    rule, func, _ = CASES[case]()
    sch, sampler = rule.sample(func, TARGET)
    tvm.ir.assert_structural_equal(sch.mod, rule.apply(func, TARGET, False).mod)
    assert sampler.names and sampler.taken == [0] * len(sampler.names)
    drawn = [inst for inst in sch.trace.insts if inst.kind.name == "SampleCategorical"]
    assert len(drawn) == len(sampler.names)
    for name, candidates in zip(sampler.names, sampler.candidates, strict=True):
        assert candidates[0] == int(getattr(DEFAULTS[case], name)), name  # the default first
        assert len(set(candidates)) == len(candidates) > 1


@pytest.mark.parametrize(
    "case,values",
    [
        ("matmul", {"tile_rows": 3, "tile_vectors": 1}),
        ("matmul", {"k_block": 32, "unroll_k": "last", "pack_b": 0}),
        ("matmul", {"tile_rows": "last", "tile_vectors": "last", "k_block": "last"}),
        ("conv2d", {"channel_vectors": 0, "tile_channels": 4, "pad_in_tile": 1}),
        ("conv2d", {"inline_padding": 1, "accumulators": "last", "pack_weights": 0}),
        ("conv2d", {"channel_vectors": 0, "tile_columns": "last", "inline_padding": 1}),
        ("depthwise", {"depthwise_rows": "last"}),
        ("depthwise", {"depthwise_rows": 0, "tile_columns": "last", "pad_in_tile": 1}),
        ("gemv", {"vector_lanes": "last", "tile_rows": "last"}),
    ],
)
def test_other_decisions_give_other_correct_schedules(case, values):
    rule, func, reference = CASES[case]()
    sch, sampler = _sample_with(rule, func, values)
    assert any(sampler.taken), sampler.knobs
    assert not tvm_ffi.structural_equal(sch.mod, rule.apply(func, TARGET, False).mod)
    assert_parallel_vectorized(sch.mod["main"])
    _check_numerics(sch.mod["main"], reference)


@pytest.mark.parametrize("case", sorted(CASES))
def test_tunable_apply_samples_and_the_trace_replays(case):
    rule, func, _ = CASES[case]()
    for seed in range(3):
        sch = rule.apply(func, TARGET, True)
        assert any(inst.kind.name == "SampleCategorical" for inst in sch.trace.insts)
        again = s_tir.Schedule(func, seed=seed + 1)
        sch.trace.apply_to_schedule(again, remove_postproc=False)  # with its decisions
        tvm.ir.assert_structural_equal(again.mod, sch.mod)


def test_out_of_range_decision_raises():
    rule, func, _ = _matmul()
    with pytest.raises(KnobDecisionError, match="tile_vectors"):
        rule.sample(func, TARGET, [99])


def test_only_the_knob_rules_sample():
    _, func, _ = _matmul()
    samples = {type(r).__name__ for r in default_rules(TARGET) if r.samples_knobs}
    assert samples == {"Conv2d", "Conv2dNHWC", "GEMV", "Matmul"}
    fallback = default_rules(TARGET)[-1]
    assert fallback.sample(func, TARGET) is None
    assert fallback.apply(func, TARGET, True) is not None  # fixed knobs, as untuned
