import numpy as np
import pytest
import torch
import tvm
from tvm import relax

import tvm_sparse
from tvm_sparse.passes import FoldChannelScale

RNG = np.random.default_rng(0)
W = RNG.standard_normal((8, 6)).astype("float32")
B = RNG.standard_normal(6).astype("float32")
G = RNG.standard_normal(6).astype("float32")


def _module(
    weight, bias, scale, *, scale_first=False, extra_user=False, output_scaled=False,
    reshaped=False,
):  # fmt: skip
    """``(x @ weight [+ bias]) [* scale]`` then a ReLU, as the torch importer binds it."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 4, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, relax.const(weight)))
            if bias is not None:
                y = bb.emit(relax.op.add(y, relax.const(bias)))
            if reshaped:
                y = bb.emit(relax.op.reshape(y, (8, 6)))
            z = y
            if scale is not None:
                pair = (relax.const(scale), y) if scale_first else (y, relax.const(scale))
                z = relax.op.multiply(*pair)
            if output_scaled:
                out = bb.emit_output(z)
            else:
                z = bb.emit(z) if scale is not None else z
                out = relax.op.nn.relu(z)
                if extra_user:
                    out = relax.op.add(out, y)
                out = bb.emit_output(out)
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("scale_first, reshaped", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_a_channel_scale_folds_into_the_weight_and_bias(with_bias, scale_first, reshaped):
    bias = B if with_bias else None
    before = _module(W, bias, G, scale_first=scale_first, reshaped=reshaped)
    after = FoldChannelScale()(before)
    expected = _module(W * G, B * G if with_bias else None, None, reshaped=reshaped)
    tvm.ir.assert_structural_equal(after, expected, map_free_vars=True)


@pytest.mark.parametrize(
    "scale, options",
    [
        (RNG.standard_normal((4, 6)).astype("float32"), {}),  # not one per channel
        (G, {"extra_user": True}),  # the unscaled output is read elsewhere
        (G, {"output_scaled": True}),  # the scaled output leaves the dataflow block
    ],
)
def test_what_does_not_fold_is_left_alone(scale, options):
    before = _module(W, B, scale, **options)
    tvm.ir.assert_structural_equal(FoldChannelScale()(before), before)


class _LayerScaled(torch.nn.Module):
    """A ConvNeXt block's MLP: two linears, the second scaled per channel."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(32, 64), torch.nn.Linear(64, 32)
        self.gamma = torch.nn.Parameter(torch.rand(32) + 0.5)

    def forward(self, x):
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(x))) * self.gamma


def test_a_pruned_layer_scaled_per_channel_runs_sparse_with_the_scale_folded():
    torch.manual_seed(0)
    model = _LayerScaled().eval()
    with torch.no_grad():
        model.fc2.weight.mul_((torch.rand(32, 64) < 0.1).float())
    x = torch.randn(2, 16, 32)
    compiled = tvm_sparse.compile(
        model, "x86", example_inputs=(x,), sparsity={"*": "unstructured"}, verify_speed=False
    )
    assert not compiled.report.find(op="multiply")
    assert len(compiled.report.find(kernel="bsr_matmul[1x1]")) == 2
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(compiled(x.numpy()), expected, rtol=1e-4, atol=1e-5)
