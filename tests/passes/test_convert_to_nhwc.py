import numpy as np
import torch
import torch.nn.functional as F
import tvm
from tvm import relax

import tvm_sparse
from tvm_sparse.frontend import import_model
from tvm_sparse.passes import ConvertToNHWC
from tvm_sparse.pipeline import prepare_passes
from tvm_sparse.targets import get_preset


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, 2, 1)
        self.dw = torch.nn.Conv2d(16, 16, 3, 1, 1, groups=16)
        self.grouped = torch.nn.Conv2d(16, 16, 3, 1, 1, groups=4)
        self.pw = torch.nn.Conv2d(16, 24, 1)
        self.fc = torch.nn.Linear(24, 10)

    def forward(self, x):
        x = F.relu6(self.stem(x))
        x = F.max_pool2d(F.relu(self.dw(x)) + x, 2)
        x = self.pw(self.grouped(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _prepared(model, x):
    return tvm.transform.Sequential(prepare_passes())(import_model(model, (x,)).mod)


def _calls(mod):
    return {
        b.var.name: b.value
        for block in mod["main"].body.blocks
        for b in block.bindings
        if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op)
    }


def test_convs_run_nhwc_and_keep_their_names():
    torch.manual_seed(0)
    before = _prepared(Net().eval(), torch.randn(1, 3, 16, 16))
    after = ConvertToNHWC()(before)
    old, new = _calls(before), _calls(after)
    convs = {n: c for n, c in old.items() if c.op.name == "relax.nn.conv2d"}
    layouts = {}
    for name, call in convs.items():
        assert name in new, f"{name} lost its name"
        value = new[name]
        layouts[int(call.attrs.groups)] = (
            value.op.name if value.op.name != "relax.nn.conv2d" else value.attrs.data_layout
        )
    # stem and depthwise go NHWC; the grouped conv has no NHWC schedule and stays NCHW; the
    # 1x1 conv is a reshape of a matmul
    assert layouts[16] == "NHWC" and layouts[4] == "NCHW"
    pointwise = [n for n, c in convs.items() if tuple(int(v) for v in c.args[1].ty.shape)[2:]
                 == (1, 1)]  # fmt: skip
    assert [new[n].op.name for n in pointwise] == ["relax.reshape"]
    ops = {c.op.name for c in new.values()}
    assert "relax.clip" not in ops and {"relax.maximum", "relax.minimum"} <= ops
    names = [b.var.name for block in after["main"].body.blocks for b in block.bindings]
    assert len(names) == len(set(names))
    assert any(n.startswith("to_nhwc") for n in names) and any(
        n.startswith("to_nchw") for n in names
    )


def test_compiled_nhwc_model_matches_torch():
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 3, 16, 16)
    compiled = tvm_sparse.compile(model, "x86", example_inputs=(x,), sparsity="off")
    with torch.no_grad():
        np.testing.assert_allclose(compiled(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-5)
    kernels = {r.kernel.split(" ")[0] for r in compiled.report.rows if r.op.endswith("conv2d")}
    assert {"Conv2dNHWC", "Conv2d"} <= kernels, compiled.report


def test_model_without_convs_is_unchanged():
    torch.manual_seed(0)
    before = _prepared(torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU6()).eval(),
                       torch.randn(2, 8))  # fmt: skip
    tvm.ir.assert_structural_equal(ConvertToNHWC()(before), before)


def test_a_lone_conv_stays_nchw():
    # two transposes of its activations would cost more than NHWC gains for one conv
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU()).eval()
    before = _prepared(model, torch.randn(1, 8, 12, 12))
    tvm.ir.assert_structural_equal(ConvertToNHWC()(before), before)
    after = ConvertToNHWC(min_convs=1)(before)
    assert any(c.op.name == "relax.nn.conv2d" and c.attrs.data_layout == "NHWC"
               for c in _calls(after).values())  # fmt: skip


def test_a_lone_winograd_conv_goes_nhwc():
    # a lone 3x3 stride-1 conv RewriteToWinograd takes (batch 1, even sizes, whole vectors)
    # is worth its two transposes; the same conv without a target, or at stride 2, is not
    torch.manual_seed(0)
    for stride, converts in ((1, True), (2, False)):
        model = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, stride, 1), torch.nn.ReLU()).eval()
        before = _prepared(model, torch.randn(1, 16, 12, 12))
        tvm.ir.assert_structural_equal(ConvertToNHWC()(before), before)
        with get_preset("x86").tvm_target():
            after = ConvertToNHWC()(before)
        layouts = [c.attrs.data_layout for c in _calls(after).values()
                   if c.op.name == "relax.nn.conv2d"]  # fmt: skip
        assert layouts == (["NHWC"] if converts else ["NCHW"])


class ChannelsLast(torch.nn.Module):
    """Channels-last at its edges, as an ONNX export of an NHWC network is: one conv framed by
    the transposes to and from NCHW."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 16, 1)

    def forward(self, x):
        return F.relu6(self.conv(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)


def test_a_conv_between_channels_last_transposes_runs_without_them():
    torch.manual_seed(0)
    model, x = ChannelsLast().eval(), torch.randn(1, 6, 6, 8)
    after = ConvertToNHWC()(_prepared(model, x))
    # the conv goes NHWC (here: the matmul of a 1x1 conv) and the transposes around it cancel
    assert "relax.permute_dims" not in {c.op.name for c in _calls(after).values()}
    assert "relax.matmul" in {c.op.name for c in _calls(after).values()}
    compiled = tvm_sparse.compile(model, "x86", example_inputs=(x,), sparsity="off")
    with torch.no_grad():
        np.testing.assert_allclose(compiled(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-5)


def test_a_shrunk_pointwise_conv_keeps_its_decision_on_its_matmul():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 48, 1),
        torch.nn.ReLU(), torch.nn.Conv2d(48, 8, 3, padding=1),
    ).eval()  # fmt: skip
    with torch.no_grad():
        model[2].weight[:16] = 0  # the 1x1 conv loses 16 of its 48 output channels
    x = torch.randn(1, 3, 12, 12)
    compiled = tvm_sparse.compile(
        model, "x86", example_inputs=(x,), verify_speed=False, measure_layers=False
    )
    with torch.no_grad():
        np.testing.assert_allclose(compiled(x.numpy()), model(x).numpy(), rtol=1e-4, atol=1e-4)
    (row,) = [r for r in compiled.report.rows if r.op == "relax.matmul"]
    assert row.pattern == "channel" and "removed 16/48 output channels" in row.reason
    assert row.output_shape[-1] == 32
