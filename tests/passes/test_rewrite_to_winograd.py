import numpy as np
import torch
import torch.nn.functional as F
import tvm
from tvm import relax

import tvm_sparse
from tvm_sparse.frontend import import_model
from tvm_sparse.passes import ConvertToNHWC, RewriteToWinograd
from tvm_sparse.pipeline import prepare_passes
from tvm_sparse.targets import get_preset

TARGET = get_preset("x86").tvm_target()


class Block(torch.nn.Module):
    """A residual block: conv-bn-relu, conv-bn + skip, relu; then a strided and an odd conv."""

    def __init__(self, c=16):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(c)
        self.conv2 = torch.nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(c)
        self.down = torch.nn.Conv2d(c, 2 * c, 3, 2, 1)  # stride 2: stays direct
        self.odd = torch.nn.Conv2d(2 * c, 2 * c, 3, 1, 1)  # 5x5 output: stays direct

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)) + x)
        return self.odd(F.relu(self.down(y)))


def _model():
    torch.manual_seed(0)
    model = Block().eval()
    for bn in (model.bn1, model.bn2):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    return model


def _ops(mod):
    ops = []
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op):
                name = b.value.op.name
                if name == "relax.call_tir":
                    name = b.value.args[0].name_hint
                ops.append((b.var.name, name))
    return ops


def test_rewrites_stride1_convs_with_their_epilogues():
    x = torch.randn(1, 16, 10, 10)
    mod = tvm.transform.Sequential(prepare_passes() + [ConvertToNHWC()])(
        import_model(_model(), (x,)).mod
    )
    convs_before = [n for n, op in _ops(mod) if op == "relax.nn.conv2d"]
    with TARGET:
        after = RewriteToWinograd()(mod)
    ops = _ops(after)
    winograd = [n for n, op in ops if op.startswith("winograd_conv2d")]
    # conv1 (+ bias + relu) and conv2 (+ bias + residual + relu): each one call that keeps
    # the conv's name; the strided and the 5x5 convs stay direct
    assert winograd == convs_before[:2]
    assert [op for _, op in ops].count("relax.nn.conv2d") == 2
    assert "relax.nn.relu" in [op for _, op in ops]  # the strided conv's ReLU stays
    calls = {b.var.name: b.value for block in after["main"].body.blocks for b in block.bindings}
    assert len(calls[winograd[0]].args[1].fields) == 3  # x, transformed weight, bias
    assert len(calls[winograd[1]].args[1].fields) == 4  # and the residual
    decisions = after["main"].attrs["tvm_sparse.decisions"]
    assert "Winograd" in str(decisions[winograd[0]]["reason"])


def test_compiled_model_matches_pytorch_and_reports_the_kernel():
    model = _model()
    x = torch.randn(1, 16, 10, 10)
    compiled = tvm_sparse.compile(model, "x86", example_inputs=(x,), sparsity="off")
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(compiled(x.numpy()), expected, rtol=1e-4, atol=1e-4)
    kernels = [r.kernel for r in compiled.report.rows if r.op == "winograd_conv2d"]
    assert kernels == ["winograd_conv2d", "winograd_conv2d"]
    assert all(r.flops == 2 * 10 * 10 * 16 * 9 * 16 for r in compiled.report.rows
               if r.op == "winograd_conv2d")  # fmt: skip


def test_an_onnx_import_gets_the_same_kernels():
    """TVM's ONNX importer leaves conv2d's out_dtype unset; such convs go Winograd (3x3) and
    matmul (1x1) as the torch importer's do."""
    import io

    import onnx

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 1)
    ).eval()
    x = torch.randn(1, 16, 10, 10)
    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, input_names=["x"], dynamo=False)
    compiled = tvm_sparse.compile(onnx.load_from_string(buffer.getvalue()), "x86", sparsity="off")
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(compiled(x.numpy()), expected, rtol=1e-4, atol=1e-4)
    ops = [r.op for r in compiled.report.rows]
    assert "winograd_conv2d" in ops and "nn.conv2d" not in ops, compiled.report.table()


def test_a_conv_result_used_twice_keeps_its_epilogue_apart():
    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(16, 16, 3, 1, 1)
            self.conv2 = torch.nn.Conv2d(16, 16, 3, 1, 1)

        def forward(self, x):
            y = self.conv(x)
            return F.relu(y) + self.conv2(y)

    torch.manual_seed(1)
    model = Twice().eval()
    x = torch.randn(1, 16, 8, 8)
    compiled = tvm_sparse.compile(model, "x86", example_inputs=(x,), sparsity="off")
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(compiled(x.numpy()), expected, rtol=1e-4, atol=1e-4)
    assert [r.op for r in compiled.report.rows].count("winograd_conv2d") == 2


def test_other_targets_are_left_alone():
    x = torch.randn(1, 16, 10, 10)
    mod = tvm.transform.Sequential(prepare_passes() + [ConvertToNHWC()])(
        import_model(_model(), (x,)).mod
    )
    cuda = tvm.target.Target({"kind": "cuda", "arch": "sm_87"})
    tvm.ir.assert_structural_equal(RewriteToWinograd(cuda)(mod), mod)


class _Timer:
    """A layer timer whose measurements say the direct conv wins for ``direct`` shapes."""

    exhausted = False

    def __init__(self, direct):
        self.direct, self.asked = direct, []

    def winograd(self, x_shape, w_shape):
        from tvm_sparse.layer_timing import LayerTiming

        self.asked.append((x_shape, w_shape))
        slow = x_shape in self.direct
        return LayerTiming(ms={"dense": 1.0, "winograd": 1.2 if slow else 0.5},
                           winner="dense" if slow else "winograd", rounds=5)  # fmt: skip


def test_a_layer_timer_decides_each_conv_and_the_report_says_how():
    x = torch.randn(1, 16, 10, 10)
    mod = tvm.transform.Sequential(prepare_passes() + [ConvertToNHWC()])(
        import_model(_model(), (x,)).mod
    )
    convs = [n for n, op in _ops(mod) if op == "relax.nn.conv2d"][:2]
    timer = _Timer(direct=set())
    with TARGET:
        ruled = RewriteToWinograd()(mod)
        timed = RewriteToWinograd(layer_timer=timer)(mod)
    assert len(timer.asked) == 2 and timer.asked[0] == ((1, 10, 10, 16), (3, 3, 16, 16))
    assert "by rule" in str(ruled["main"].attrs["tvm_sparse.decisions"][convs[0]]["reason"])
    reason = str(timed["main"].attrs["tvm_sparse.decisions"][convs[0]]["reason"])
    assert "Winograd" in reason and "winograd 0.500 ms" in reason
    # where the direct conv wins, it stays, and says why
    with TARGET:
        kept = RewriteToWinograd(layer_timer=_Timer(direct={(1, 10, 10, 16)}))(mod)
    assert not [n for n, op in _ops(kept) if op.startswith("winograd_conv2d")]
    reason = str(kept["main"].attrs["tvm_sparse.decisions"][convs[1]]["reason"])
    assert reason.startswith("3x3 stride-1 conv kept direct") and "direct 1.000 ms" in reason


def test_a_compile_that_times_layers_matches_pytorch_either_way(tmp_path, monkeypatch):
    from tvm_sparse.measure import calibrate_host

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(calibrate_host, "QUICK_GRID", {"ms": (16,), "blocks": ((16, 1),),
                                                       "densities": (0.2,), "nm": ()})  # fmt: skip
    model = _model()
    x = torch.randn(1, 16, 10, 10)
    compiled = tvm_sparse.compile(model, "x86", example_inputs=(x,), measure_layers=True,
                                  verify_speed=False)  # fmt: skip
    with torch.no_grad():
        np.testing.assert_allclose(compiled(x.numpy()), model(x).numpy(), rtol=1e-4, atol=1e-4)
    timed = [r for r in compiled.report.rows if "measured on this machine" in r.reason]
    assert len(timed) == 2, str(compiled.report)
    for row in timed:
        assert (row.op == "winograd_conv2d") == ("kept direct" not in row.reason)
    assert len(list((tmp_path / "tvm_sparse" / "layers").glob("*.json"))) == 1  # one shape
