import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from tvm_sparse.passes import DetectSparsity, ShrinkPrunedChannels

F32 = "float32"


def _bind(mod, **params):
    return relax.transform.BindParams("main", params)(mod)


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(F32)


def _decisions(mod):
    attr = mod["main"].attrs["tvm_sparse.decisions"]
    return {str(k): {str(a): str(b) for a, b in v.items()} for k, v in attr.items()}


# --- structural tests ----------------------------------------------------------------------------


def test_conv_relu_conv():
    @I.ir_module
    class Before:
        @R.function
        def main(
            x: R.Tensor((1, 3, 4, 4), F32),
            w0: R.Tensor((4, 3, 1, 1), F32),
            w1: R.Tensor((2, 4, 1, 1), F32),
        ):
            with R.dataflow():
                lv = R.nn.conv2d(x, w0)
                lv1 = R.nn.relu(lv)
                lv2 = R.nn.conv2d(lv1, w1)
                R.output(lv2)
            return lv2

    @I.ir_module
    class Expected:
        @R.function
        def main(
            x: R.Tensor((1, 3, 4, 4), F32),
            w0: R.Tensor((2, 3, 1, 1), F32),
            w1: R.Tensor((2, 2, 1, 1), F32),
        ):
            R.func_attr(
                {
                    "tvm_sparse.decisions": {
                        "lv": {
                            "kernel": "dense-shrunk",
                            "pattern": "channel",
                            "reason": "removed 2/4 output channels",
                        },
                        "lv2": {
                            "kernel": "dense-shrunk",
                            "pattern": "channel",
                            "reason": "removed 2/4 input channels",
                        },
                    }
                }
            )
            with R.dataflow():
                lv = R.nn.conv2d(x, w0)
                lv1 = R.nn.relu(lv)
                lv2 = R.nn.conv2d(lv1, w1)
                R.output(lv2)
            return lv2

    w0, w1 = _rand(4, 3, 1, 1), _rand(2, 4, 1, 1, seed=1)
    w0[[1, 3]] = 0
    after = ShrinkPrunedChannels()(_bind(Before, w0=w0, w1=w1))
    expected = _bind(Expected, w0=w0[[0, 2]], w1=w1[:, [0, 2]])
    tvm.ir.assert_structural_equal(after, expected)


def test_linear_gelu_linear_with_bias_folding():
    @I.ir_module
    class Before:
        @R.function
        def main(
            x: R.Tensor((2, 3), F32),
            w0: R.Tensor((3, 4), F32),
            b0: R.Tensor((4,), F32),
            w1: R.Tensor((4, 5), F32),
            b1: R.Tensor((5,), F32),
        ):
            with R.dataflow():
                lv = R.matmul(x, w0)
                lv1 = R.add(b0, lv)
                lv2 = R.nn.gelu(lv1)
                lv3 = R.matmul(lv2, w1)
                lv4 = R.add(b1, lv3)
                R.output(lv4)
            return lv4

    @I.ir_module
    class Expected:
        @R.function
        def main(
            x: R.Tensor((2, 3), F32),
            w0: R.Tensor((3, 3), F32),
            b0: R.Tensor((3,), F32),
            w1: R.Tensor((3, 5), F32),
            b1: R.Tensor((5,), F32),
        ):
            R.func_attr(
                {
                    "tvm_sparse.decisions": {
                        "lv": {
                            "kernel": "dense-shrunk",
                            "pattern": "channel",
                            "reason": "removed 1/4 output channels",
                        },
                        "lv3": {
                            "kernel": "dense-shrunk",
                            "pattern": "channel",
                            "reason": "removed 1/4 input channels, folded constant inputs into"
                            " the bias",
                        },
                    }
                }
            )
            with R.dataflow():
                lv = R.matmul(x, w0)
                lv1 = R.add(b0, lv)
                lv2 = R.nn.gelu(lv1)
                lv3 = R.matmul(lv2, w1)
                lv4 = R.add(b1, lv3)
                R.output(lv4)
            return lv4

    w0, b0, w1, b1 = _rand(3, 4), _rand(4, seed=1), _rand(4, 5, seed=2), _rand(5, seed=3)
    w0[:, 2] = 0  # output feature 2 is gelu(b0[2]), a constant
    after = ShrinkPrunedChannels()(_bind(Before, w0=w0, b0=b0, w1=w1, b1=b1))
    g = 0.5 * b0[2] * (1 + np.vectorize(__import__("math").erf)(b0[2] / np.sqrt(2)))
    keep = [0, 1, 3]
    expected = _bind(
        Expected,
        w0=w0[:, keep],
        b0=b0[keep],
        w1=w1[keep],
        b1=(b1 + g * w1[2]).astype(F32),
    )
    tvm.ir.assert_structural_equal(after, expected)


def test_conv_clip_conv():
    # ReLU6 as frontends import it: clip keeps a removed channel's constant (here 0)
    @I.ir_module
    class Before:
        @R.function
        def main(
            x: R.Tensor((1, 3, 4, 4), F32),
            w0: R.Tensor((4, 3, 1, 1), F32),
            w1: R.Tensor((2, 4, 1, 1), F32),
        ):
            with R.dataflow():
                lv = R.nn.conv2d(x, w0)
                lv1 = R.clip(lv, R.prim_value(T.float64(0.0)), R.prim_value(T.float64(6.0)))
                lv2 = R.nn.conv2d(lv1, w1)
                R.output(lv2)
            return lv2

    @I.ir_module
    class Expected:
        @R.function
        def main(
            x: R.Tensor((1, 3, 4, 4), F32),
            w0: R.Tensor((3, 3, 1, 1), F32),
            w1: R.Tensor((2, 3, 1, 1), F32),
        ):
            R.func_attr(
                {
                    "tvm_sparse.decisions": {
                        "lv": {
                            "kernel": "dense-shrunk",
                            "pattern": "channel",
                            "reason": "removed 1/4 output channels",
                        },
                        "lv2": {
                            "kernel": "dense-shrunk",
                            "pattern": "channel",
                            "reason": "removed 1/4 input channels",
                        },
                    }
                }
            )
            with R.dataflow():
                lv = R.nn.conv2d(x, w0)
                lv1 = R.clip(lv, R.prim_value(T.float64(0.0)), R.prim_value(T.float64(6.0)))
                lv2 = R.nn.conv2d(lv1, w1)
                R.output(lv2)
            return lv2

    w0, w1 = _rand(4, 3, 1, 1), _rand(2, 4, 1, 1, seed=1)
    w0[2] = 0
    after = ShrinkPrunedChannels()(_bind(Before, w0=w0, w1=w1))
    expected = _bind(Expected, w0=w0[[0, 1, 3]], w1=w1[:, [0, 1, 3]])
    tvm.ir.assert_structural_equal(after, expected)


def test_conv_batch_norm_decomposed():
    """Zero conv rows through decomposed BN: the BN shift is a constant folded downstream."""

    @I.ir_module
    class Before:
        @R.function
        def main(
            x: R.Tensor((1, 2, 3, 3), F32),
            w0: R.Tensor((3, 2, 1, 1), F32),
            scale: R.Tensor((1, 3, 1, 1), F32),
            shift: R.Tensor((1, 3, 1, 1), F32),
            w1: R.Tensor((2, 3, 1, 1), F32),
        ):
            with R.dataflow():
                lv = R.nn.conv2d(x, w0)
                lv1 = R.multiply(lv, scale)
                lv2 = R.add(lv1, shift)
                lv3 = R.nn.conv2d(lv2, w1)
                R.output(lv3)
            return lv3

    @I.ir_module
    class Expected:
        @R.function
        def main(
            x: R.Tensor((1, 2, 3, 3), F32),
            w0: R.Tensor((2, 2, 1, 1), F32),
            scale: R.Tensor((1, 2, 1, 1), F32),
            shift: R.Tensor((1, 2, 1, 1), F32),
            w1: R.Tensor((2, 2, 1, 1), F32),
            corr: R.Tensor((1, 2, 1, 1), F32),
        ):
            R.func_attr(
                {
                    "tvm_sparse.decisions": {
                        "lv": {
                            "kernel": "dense-shrunk",
                            "pattern": "channel",
                            "reason": "removed 1/3 output channels",
                        },
                        "lv3": {
                            "kernel": "dense-shrunk",
                            "pattern": "channel",
                            "reason": "removed 1/3 input channels, folded constant inputs into"
                            " the bias",
                        },
                    }
                }
            )
            with R.dataflow():
                lv = R.nn.conv2d(x, w0)
                lv1 = R.multiply(lv, scale)
                lv2 = R.add(lv1, shift)
                lv3 = R.nn.conv2d(lv2, w1)
                lv3_fold = R.add(lv3, corr)
                R.output(lv3_fold)
            return lv3_fold

    w0, w1 = _rand(3, 2, 1, 1), _rand(2, 3, 1, 1, seed=1)
    scale, shift = _rand(1, 3, 1, 1, seed=2), _rand(1, 3, 1, 1, seed=3)
    w0[1] = 0
    params = dict(w0=w0, scale=scale, shift=shift, w1=w1)
    after = ShrinkPrunedChannels()(_bind(Before, **params))
    keep = [0, 2]
    corr = (shift[0, 1, 0, 0] * w1[:, 1, 0, 0]).reshape(1, 2, 1, 1).astype(F32)
    expected = _bind(
        Expected,
        w0=w0[keep],
        scale=scale[:, keep],
        shift=shift[:, keep],
        w1=w1[:, keep],
        corr=corr,
    )
    tvm.ir.assert_structural_equal(after, expected)


def test_residual_channel_zero_in_one_branch_stays():
    @I.ir_module
    class Before:
        @R.function
        def main(
            x: R.Tensor((1, 3, 2, 2), F32),
            w0: R.Tensor((3, 3, 1, 1), F32),
            w1: R.Tensor((3, 3, 1, 1), F32),
            w2: R.Tensor((2, 3, 1, 1), F32),
        ):
            with R.dataflow():
                lv = R.nn.conv2d(x, w0)
                lv1 = R.nn.conv2d(x, w1)
                lv2 = R.add(lv, lv1)
                lv3 = R.nn.conv2d(lv2, w2)
                R.output(lv3)
            return lv3

    w0, w1, w2 = _rand(3, 3, 1, 1), _rand(3, 3, 1, 1, seed=1), _rand(2, 3, 1, 1, seed=2)
    w0[0] = 0  # zero in one branch only: must stay
    w0[2] = 0
    w1[2] = 0  # zero in both branches: removable
    after = ShrinkPrunedChannels()(_bind(Before, w0=w0, w1=w1, w2=w2))

    @I.ir_module
    class Expected:
        @R.function
        def main(
            x: R.Tensor((1, 3, 2, 2), F32),
            w0: R.Tensor((2, 3, 1, 1), F32),
            w1: R.Tensor((2, 3, 1, 1), F32),
            w2: R.Tensor((2, 2, 1, 1), F32),
        ):
            R.func_attr(
                {
                    "tvm_sparse.decisions": {
                        "lv": {
                            "kernel": "dense-shrunk",
                            "pattern": "channel",
                            "reason": "removed 1/3 output channels, kept 1 zero output channels: "
                            "channels coupled through relax.add (lv2) to a branch that is not zero",
                        },
                        "lv1": {
                            "kernel": "dense-shrunk",
                            "pattern": "channel",
                            "reason": "removed 1/3 output channels",
                        },
                        "lv3": {
                            "kernel": "dense-shrunk",
                            "pattern": "channel",
                            "reason": "removed 1/3 input channels",
                        },
                    }
                }
            )
            with R.dataflow():
                lv = R.nn.conv2d(x, w0)
                lv1 = R.nn.conv2d(x, w1)
                lv2 = R.add(lv, lv1)
                lv3 = R.nn.conv2d(lv2, w2)
                R.output(lv3)
            return lv3

    expected = _bind(Expected, w0=w0[:2], w1=w1[:2], w2=w2[:, :2])
    tvm.ir.assert_structural_equal(after, expected)

    # Channel 0 alone (zero in lv only) is reported as kept because of the residual branch.
    w0b = w0.copy()
    w1b = w1.copy()
    w1b[2] = 1.0
    kept = ShrinkPrunedChannels()(_bind(Before, w0=w0b, w1=w1b, w2=w2))
    reason = _decisions(kept)["lv"]["reason"]
    assert reason.startswith("kept 2/3 zero output channels")
    assert "branch that is not zero" in reason


def test_concat_offsets():
    @I.ir_module
    class Before:
        @R.function
        def main(
            x: R.Tensor((1, 2, 2, 2), F32),
            w0: R.Tensor((2, 2, 1, 1), F32),
            w1: R.Tensor((3, 2, 1, 1), F32),
            w2: R.Tensor((2, 5, 1, 1), F32),
        ):
            with R.dataflow():
                lv = R.nn.conv2d(x, w0)
                lv1 = R.nn.conv2d(x, w1)
                lv2 = R.concat((lv, lv1), axis=1)
                lv3 = R.nn.conv2d(lv2, w2)
                R.output(lv3)
            return lv3

    @I.ir_module
    class Expected:
        @R.function
        def main(
            x: R.Tensor((1, 2, 2, 2), F32),
            w0: R.Tensor((2, 2, 1, 1), F32),
            w1: R.Tensor((2, 2, 1, 1), F32),
            w2: R.Tensor((2, 4, 1, 1), F32),
        ):
            R.func_attr(
                {
                    "tvm_sparse.decisions": {
                        "lv1": {
                            "kernel": "dense-shrunk",
                            "pattern": "channel",
                            "reason": "removed 1/3 output channels",
                        },
                        "lv3": {
                            "kernel": "dense-shrunk",
                            "pattern": "channel",
                            "reason": "removed 1/5 input channels",
                        },
                    }
                }
            )
            with R.dataflow():
                lv = R.nn.conv2d(x, w0)
                lv1 = R.nn.conv2d(x, w1)
                lv2 = R.concat((lv, lv1), axis=1)
                lv3 = R.nn.conv2d(lv2, w2)
                R.output(lv3)
            return lv3

    w0, w1, w2 = _rand(2, 2, 1, 1), _rand(3, 2, 1, 1, seed=1), _rand(2, 5, 1, 1, seed=2)
    w1[1] = 0  # channel 2 + 1 = 3 of the concat
    after = ShrinkPrunedChannels()(_bind(Before, w0=w0, w1=w1, w2=w2))
    expected = _bind(Expected, w0=w0, w1=w1[[0, 2]], w2=w2[:, [0, 1, 2, 4]])
    tvm.ir.assert_structural_equal(after, expected)


def test_nothing_pruned_is_unchanged():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 3, 4, 4), F32), w0: R.Tensor((4, 3, 1, 1), F32)):
            with R.dataflow():
                lv = R.nn.conv2d(x, w0)
                lv1 = R.nn.relu(lv)
                R.output(lv1)
            return lv1

    before = _bind(Before, w0=_rand(4, 3, 1, 1))
    tvm.ir.assert_structural_equal(ShrinkPrunedChannels()(before), before)


def test_zero_channels_reaching_output_are_kept():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 3, 4, 4), F32), w0: R.Tensor((4, 3, 1, 1), F32)):
            with R.dataflow():
                lv = R.nn.conv2d(x, w0)
                R.output(lv)
            return lv

    w0 = _rand(4, 3, 1, 1)
    w0[0] = 0
    before = _bind(Before, w0=w0)
    after = ShrinkPrunedChannels()(before)
    tvm.ir.assert_structural_equal(after["main"].body, before["main"].body)
    reason = _decisions(after)["lv"]["reason"]
    assert reason == "kept 1/4 zero output channels: reaches the function output"


def test_decisions_merge_with_existing():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 3, 4, 4), F32), w0: R.Tensor((4, 3, 1, 1), F32)):
            R.func_attr({"tvm_sparse.decisions": {"other": {"kernel": "x", "reason": "y"}}})
            with R.dataflow():
                lv = R.nn.conv2d(x, w0)
                R.output(lv)
            return lv

    w0 = _rand(4, 3, 1, 1)
    w0[0] = 0
    decisions = _decisions(ShrinkPrunedChannels()(_bind(Before, w0=w0)))
    assert decisions["other"] == {"kernel": "x", "reason": "y"}
    assert "lv" in decisions


# --- numerics against PyTorch ---------------------------------------------------------------

torch = pytest.importorskip("torch")
nn = torch.nn


class _ConvNet(nn.Module):
    """conv -> BN -> ReLU -> grouped conv -> depthwise -> pool -> flatten -> linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.c3 = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6 * 3 * 3, 5)

    def forward(self, x):
        y = torch.relu(self.bn(self.c1(x)))
        y = torch.relu(self.c2(y))
        y = torch.nn.functional.silu(self.dw(y))
        y = nn.functional.max_pool2d(self.c3(y), 2)
        return self.fc(y.flatten(1))


class _ResBlock(nn.Module):
    def __init__(self, c=6):
        super().__init__()
        self.a = nn.Conv2d(c, c, 3, padding=1)
        self.b = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.head = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        y = self.bn(self.b(y))
        z = torch.relu(y + x)
        return self.head(z).mean((2, 3))


class _Attention(nn.Module):
    def __init__(self, e=8, heads=2):
        super().__init__()
        self.h, self.d = heads, e // heads
        self.q, self.k, self.v, self.o = (nn.Linear(e, e) for _ in range(4))
        self.ln = nn.LayerNorm(e)
        self.ff1, self.ff2 = nn.Linear(e, 12), nn.Linear(12, e)

    def forward(self, x):
        b, s, e = x.shape

        def split(t):
            return t.reshape(b, s, self.h, self.d).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        a = torch.softmax(q @ k.transpose(-1, -2) / self.d**0.5, dim=-1) @ v
        x = self.ln(x + self.o(a.transpose(1, 2).reshape(b, s, e)))
        return x + self.ff2(nn.functional.gelu(self.ff1(x)))


class _InvertedResidualSE(nn.Module):
    """MobileNetV3's block as its libraries write it: 1x1 expansion, ReLU6 (a clamp), depthwise
    3x3, squeeze-excitation gated by a hard sigmoid, hard swish, 1x1 projection, residual."""

    def __init__(self, c=6, hidden=12, squeeze=4):
        super().__init__()
        self.expand = nn.Conv2d(c, hidden, 1)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
        self.se_reduce = nn.Conv2d(hidden, squeeze, 1)
        self.se_expand = nn.Conv2d(squeeze, hidden, 1)
        self.project = nn.Conv2d(hidden, c, 1)

    def forward(self, x):
        y = torch.clamp(self.expand(x), 0.0, 6.0)
        y = self.dw(y)
        gate = nn.functional.hardsigmoid(
            self.se_expand(torch.relu(self.se_reduce(y.mean((2, 3), keepdim=True))))
        )
        y = nn.functional.hardswish(y * gate)
        return x + self.project(y)


class _PreNormBlock(nn.Module):
    """A pre-norm transformer MLP block on a residual stream of ``d`` channels."""

    def __init__(self, d_in=5, d=8, ff=12, out=3):
        super().__init__()
        self.embed = nn.Linear(d_in, d)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, ff), nn.Linear(ff, d)
        self.head = nn.Linear(d, out)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.fc2(nn.functional.gelu(self.fc1(self.ln1(h))))
        return self.head(self.ln2(h))


def _zero(param, index):
    with torch.no_grad():
        param[index] = 0


def _conv_pruned():
    m = _ConvNet()
    _zero(m.c1.weight, [1, 4])  # BN shift makes them constants
    _zero(m.c2.weight, [0, 5])  # one per group: groups stay equal
    _zero(m.c3.weight, [2])
    return m, torch.randn(1, 3, 6, 6)


def _conv_unequal_groups():
    m = _ConvNet()
    _zero(m.c2.weight, [0, 1])  # both in group 0: grouped conv must keep them
    return m, torch.randn(1, 3, 6, 6)


def _res_pruned():
    m = _ResBlock()
    _zero(m.a.weight, [0, 3])  # constant relu(bias) into a padded 3x3 conv: correction map
    _zero(m.b.weight, [1, 2])  # zero in one residual branch only
    return m, torch.randn(1, 6, 5, 5)


def _attention_zero_v_head():
    m = _Attention()
    _zero(m.v.weight, slice(4, 8))  # head 1 of V: constant bias, attention keeps it constant
    _zero(m.ff1.weight, [3, 7, 11])
    return m, torch.randn(1, 3, 8)


def _attention_zero_out_head():
    m = _Attention()
    _zero(m.o.weight, (slice(None), slice(0, 4)))  # head 0 unused by the output projection
    return m, torch.randn(1, 3, 8)


def _inverted_residual_se():
    m = _InvertedResidualSE()
    # as a dependency-aware pruner zeroes a channel: its producer and the SE gate's row
    for param in (m.expand.weight, m.expand.bias, m.se_expand.weight, m.se_expand.bias):
        _zero(param, [1, 4])
    _zero(m.expand.weight, [9])  # a constant (its bias) that the padded depthwise conv breaks
    _zero(m.se_reduce.weight, [2])
    return m, torch.randn(1, 6, 5, 5)


def _hidden_channels_pruned():
    # residual stream channels 1 and 5 pruned as a dependency-aware pruner does: producers'
    # rows and the norms' scale and shift; the embedding's bias leaves them nonzero constants,
    # which still count in both LayerNorms' mean and variance
    m = _PreNormBlock()
    for param in (m.embed.weight, m.fc2.weight, m.fc2.bias, m.ln1.weight, m.ln1.bias,
                  m.ln2.weight, m.ln2.bias):  # fmt: skip
        _zero(param, [1, 5])
    return m, torch.randn(2, 4, 5)


def _mlp_all_zero():
    m = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3), nn.Tanh(), nn.Linear(3, 2))
    _zero(m[0].weight, slice(None))
    return m, torch.randn(2, 5)


def _mlp_dense():
    return nn.Sequential(nn.Linear(5, 7), nn.GELU(), nn.Linear(7, 3)), torch.randn(3, 5)


def _mlp_odd():
    m = nn.Sequential(nn.Linear(11, 13), nn.SiLU(), nn.Linear(13, 7))
    _zero(m[0].weight, [0, 5, 12])
    return m, torch.randn(3, 11)


MODELS = {
    "conv_bn_grouped_depthwise": _conv_pruned,
    "grouped_unequal": _conv_unequal_groups,
    "resnet_block": _res_pruned,
    "attention_zero_v_head": _attention_zero_v_head,
    "attention_zero_out_head": _attention_zero_out_head,
    "inverted_residual_se": _inverted_residual_se,
    "hidden_channels_through_layer_norm": _hidden_channels_pruned,
    "all_zero_weight": _mlp_all_zero,
    "dense": _mlp_dense,
    "odd_shapes": _mlp_odd,
}


def _import(model, x):
    from tvm.relax.frontend.torch import from_exported_program

    mod = from_exported_program(torch.export.export(model, (x,)))
    mod = relax.transform.DecomposeOpsForInference()(mod)
    return relax.transform.FoldConstant()(mod)


def _run(mod, x):
    exe = tvm.compile(mod, tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(exe, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x.numpy()))
    return out[0].numpy() if not hasattr(out, "numpy") else out.numpy()


def _weight_count(mod):
    total = 0

    def visit(e):
        nonlocal total
        if isinstance(e, relax.Call) and e.op.name in ("relax.matmul", "relax.nn.conv2d"):
            if isinstance(e.args[1], tvm.ir.GenericConst):
                total += int(np.prod(e.args[1].value.numpy().shape))

    relax.analysis.post_order_visit(mod["main"], visit)
    return total


@pytest.mark.parametrize("name", list(MODELS))
def test_numerics_against_torch(name):
    torch.manual_seed(0)
    model, x = MODELS[name]()
    model.eval()
    for mod_ in model.modules():
        if isinstance(mod_, nn.BatchNorm2d):
            with torch.no_grad():
                mod_.running_mean.uniform_(-1, 1)
                mod_.running_var.uniform_(0.5, 2)
                mod_.bias.uniform_(-1, 1)
    with torch.no_grad():
        ref = model(x).numpy()
    before = DetectSparsity()(_import(model, x))
    after = ShrinkPrunedChannels()(before)
    np.testing.assert_allclose(_run(after, x), ref, rtol=1e-4, atol=1e-5)
    shrunk = _weight_count(after) < _weight_count(before)
    assert shrunk == (name not in ("dense", "grouped_unequal"))
    if name == "dense":
        tvm.ir.assert_structural_equal(after, before)


def test_channels_pass_clamp_depthwise_and_squeeze_excitation():
    # MobileNet blocks: a pruned channel goes through ReLU6 (clip), the depthwise conv, the SE
    # gate (mean, convs, hard sigmoid, multiply) and hard swish, and is removed on all of them
    torch.manual_seed(0)
    model, x = _inverted_residual_se()
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    after = ShrinkPrunedChannels()(DetectSparsity()(_import(model, x)))
    np.testing.assert_allclose(_run(after, x), ref, rtol=1e-4, atol=1e-5)
    shapes = _shapes_of(after, "relax.nn.conv2d")
    assert (10, 1, 3, 3) in shapes  # the depthwise conv lost channels 1 and 4
    assert (3, 10, 1, 1) in shapes  # SE reduce: 2 of 12 inputs and 1 of 4 outputs gone


def test_hidden_channels_leave_layer_norms_exactly():
    torch.manual_seed(0)
    model, x = _hidden_channels_pruned()
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    after = ShrinkPrunedChannels()(DetectSparsity()(_import(model, x)))
    np.testing.assert_allclose(_run(after, x), ref, rtol=1e-4, atol=1e-5)
    # (in, out) of each matmul weight: the stream has 6 of its 8 channels everywhere
    assert sorted(_shapes_of(after, "relax.matmul")) == [(5, 6), (6, 3), (6, 12), (12, 6)]
    decisions = _decisions(after)
    assert all("removed 2/8" in decisions[v]["reason"] for v in decisions if v != "__function__")


def _shapes_of(mod, op_name):
    shapes = []

    def visit(e):
        if isinstance(e, relax.Call) and e.op.name == op_name:
            shapes.append(tuple(int(v) for v in e.args[1].ty.shape))

    relax.analysis.post_order_visit(mod["main"], visit)
    return shapes


@pytest.mark.parametrize(
    ("out_channels", "zero", "kept"),
    [
        (64, 2, 64),  # 62 would be rounded back up: nothing removed
        (64, 21, 48),  # 43 -> 48, 5 zero channels stay
        (64, 48, 16),  # already a multiple
        (10, 5, 5),  # 16 > 10 channels: no rounding possible, shrink fully
    ],
)
def test_channel_multiple_rounds_kept_output_channels(out_channels, zero, kept):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(8, out_channels, 3, padding=1), nn.ReLU(), nn.Conv2d(out_channels, 16, 1)
    ).eval()
    _zero(model[0].weight, slice(0, 2 * zero, 2) if 2 * zero <= out_channels else slice(0, zero))
    assert int((model[0].weight.flatten(1).abs().sum(1) == 0).sum()) == zero
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        ref = model(x).numpy()
    after = ShrinkPrunedChannels(channel_multiple=16)(DetectSparsity()(_import(model, x)))
    first, second = _shapes_of(after, "relax.nn.conv2d")
    assert first[0] == kept and second[1] == kept
    np.testing.assert_allclose(_run(after, x), ref, rtol=1e-4, atol=1e-5)
    if kept == out_channels:
        assert "multiple of 16" in _decisions(after)["lv"]["reason"]
    elif kept % 16 == 0 and kept > out_channels - zero:
        reason = _decisions(after)["lv"]["reason"]
        assert f"kept {kept - (out_channels - zero)} zero output channels" in reason
        assert "multiple of 16 output channels" in reason


class _Timer:
    """Answers ``widths`` with fixed times: the pass's wiring, not the machine, is tested
    here (``test_layer_timing`` times real builds)."""

    def __init__(self, exact_ms: float | None, rounded_ms: float = 1.0):
        self.exact_ms, self.rounded_ms = exact_ms, rounded_ms
        self.asked: list[tuple] = []
        self.exhausted = exact_ms is None
        self.runner = type("Runner", (), {"name": "this machine"})()

    def widths(self, x_shape, weight, wanted, *, conv=None):
        from tvm_sparse.layer_timing import LayerTiming

        self.asked.append((tuple(x_shape), weight.shape, wanted, conv))
        if self.exact_ms is None:
            return None
        ms = {"dense": self.exact_ms, f"rounded:{wanted}": self.rounded_ms}
        winner = "dense" if self.exact_ms < self.rounded_ms * 1.05 else f"rounded:{wanted}"
        return LayerTiming(ms=ms, winner=winner, rounds=3)


@pytest.mark.parametrize(
    ("exact_ms", "kept", "evidence"),
    [
        (0.5, 43, "not rounded up to 48: measured on this machine, 43 channels 0.500 ms"),
        (2.0, 48, "has 48 output channels: measured on this machine, 43 channels 2.000 ms"),
        (None, 48, "by rule: budget spent on this machine"),
    ],
)
def test_rounding_is_decided_by_the_layer_timer(exact_ms, kept, evidence):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 16, 1)).eval()
    _zero(model[0].weight, slice(0, 42, 2))  # 21 zero rows: 43 kept
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        ref = model(x).numpy()
    timer = _Timer(exact_ms)
    after = ShrinkPrunedChannels(channel_multiple=16, layer_timer=timer)(
        DetectSparsity()(_import(model, x))
    )
    first, second = _shapes_of(after, "relax.nn.conv2d")
    assert first[0] == kept and second[1] == kept
    np.testing.assert_allclose(_run(after, x), ref, rtol=1e-4, atol=1e-5)
    # the first conv is timed on its real input, with its real kernel and padding
    assert timer.asked[0] == ((2, 8, 5, 5), (43, 8, 3, 3), 48, ((1, 1), (1, 1, 1, 1), (1, 1)))
    assert evidence in _decisions(after)["lv"]["reason"]


def test_channels_a_depthwise_conv_reads_are_rounded_to_whole_vectors():
    # the 1x1 expansion alone times faster exact, but the depthwise conv after it needs whole
    # channel vectors: its count is rounded by rule, whatever the expansion's timing says
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(8, 64, 1, bias=False), nn.ReLU6(),
        nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False),
        nn.ReLU6(), nn.Conv2d(64, 16, 1),
    ).eval()  # fmt: skip
    _zero(model[0].weight, slice(0, 42, 2))  # 21 zero rows: 43 kept
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        ref = model(x).numpy()
    after = ShrinkPrunedChannels(channel_multiple=16, layer_timer=_Timer(0.5))(
        DetectSparsity()(_import(model, x))
    )
    assert {shape[0] for shape in _shapes_of(after, "relax.nn.conv2d")[:2]} == {48}
    reasons = " ".join(d["reason"] for d in _decisions(after).values())
    assert "has 48 channels, whole vectors of 16 (the SIMD width) as its schedule needs" in reasons
    np.testing.assert_allclose(_run(after, x), ref, rtol=1e-4, atol=1e-5)


def test_channel_multiple_must_be_positive():
    with pytest.raises(ValueError, match="channel_multiple"):
        ShrinkPrunedChannels(channel_multiple=0)
