import pytest
import torch
import torch.nn.functional as F
import tvm
from schedule_testing import TARGET, loop_kinds, run_and_compare
from tvm import tirx

from tvm_sparse.schedules.cpu import Conv2dNHWC, Fallback, Matmul, default_rules


class SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 16, 3, 2, 1)
        self.b1 = torch.nn.BatchNorm2d(16)
        self.c2 = torch.nn.Conv2d(16, 16, 3, 1, 1, groups=4)
        self.c3 = torch.nn.Conv2d(16, 16, 3, 1, 1, groups=16)
        self.c4 = torch.nn.Conv2d(16, 24, 1)
        self.fc = torch.nn.Linear(24, 10)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.max_pool2d(x, 3, 2, 1)
        y = self.c3(F.relu(self.c2(x))) + x
        y = F.avg_pool2d(self.c4(y), 2)
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


class TransformerLayer(torch.nn.Module):
    def __init__(self, d=64, heads=4):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.out = torch.nn.Linear(d, d)
        self.ln1 = torch.nn.LayerNorm(d)
        self.ln2 = torch.nn.LayerNorm(d)
        self.f1 = torch.nn.Linear(d, 4 * d)
        self.f2 = torch.nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, -1)
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / 4.0, -1) @ v
        x = x + self.out(att.transpose(1, 2).reshape(b, t, d))
        return x + self.f2(F.gelu(self.f1(self.ln2(x))))


EXPECTED_CNN = {"Conv2d": 4, "Pool": 2, "Matmul": 1}
EXPECTED_TRANSFORMER = {"Matmul": 6, "Reduction": 2}  # both layer norms share one func


@pytest.mark.parametrize(
    "model,x,expected",
    [
        (SmallCNN, (2, 3, 32, 32), EXPECTED_CNN),
        (TransformerLayer, (2, 10, 64), EXPECTED_TRANSFORMER),
    ],
)
def test_every_primfunc_claimed(model, x, expected):
    claimed, mod = run_and_compare(model(), [torch.randn(*x)], default_rules(TARGET))
    counts = {}
    for rule in claimed.values():
        counts[rule] = counts.get(rule, 0) + 1
    for rule, n in expected.items():
        assert counts.get(rule, 0) == n, claimed
    assert "Fallback" not in counts, claimed  # reshapes etc. are Injective's
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            assert tirx.ForKind.PARALLEL in loop_kinds(func), gv.name_hint


def test_fallback_never_declines_and_parallelises():
    from tvm.script import tirx as T

    @T.prim_func(private=True, s_tir=True)
    def cumulative(
        a: T.Buffer((T.int64(6), T.int64(9)), "float32"),
        c: T.Buffer((T.int64(6), T.int64(9)), "float32"),
    ):
        for i, j, k in T.grid(T.int64(6), T.int64(9), T.int64(9)):
            with T.sblock("cum"):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                with T.init():
                    c[vi, vj] = T.float32(0)
                c[vi, vj] = c[vi, vj] + T.if_then_else(vk <= vj, a[vi, vk], T.float32(0))

    rules = default_rules(TARGET)
    assert isinstance(rules[-1], Fallback)
    sch = rules[-1].apply(cumulative, TARGET, False)
    assert sch is not None
    assert tirx.ForKind.PARALLEL in loop_kinds(sch.mod["main"])
    tvm.compile(sch.mod["main"].with_attr("global_symbol", "main"), TARGET)


def test_knobs_follow_target():
    avx512 = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    avx2 = tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})
    neon = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
    for rule_type in (Matmul, Conv2dNHWC):
        lanes = [
            next(r for r in default_rules(t) if isinstance(r, rule_type)).knobs.vector_lanes
            for t in (avx512, avx2, neon)
        ]
        assert lanes == [16, 8, 4], rule_type
    cuda = tvm.target.Target({"kind": "cuda"})
    assert not any(rule.is_target_available(cuda) for rule in default_rules(TARGET))
