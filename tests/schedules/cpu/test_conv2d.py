import pytest
import torch
import torch.nn.functional as F
from schedule_testing import assert_parallel_vectorized, parallel_blocks, run_and_compare

from tvm_sparse.schedules.cpu import Conv2d, Fallback


class ConvBlock(torch.nn.Module):
    def __init__(self, cin, cout, k, stride, pad, groups, residual):
        super().__init__()
        self.conv = torch.nn.Conv2d(cin, cout, k, stride, pad, groups=groups)
        self.bn = torch.nn.BatchNorm2d(cout)
        self.bn.running_mean.uniform_(-1, 1)
        self.bn.running_var.uniform_(0.5, 2)
        self.residual = residual

    def forward(self, x):
        y = self.bn(self.conv(x))
        if self.residual:
            y = y + x
        return F.relu(y)


@pytest.mark.parametrize(
    "cin,cout,k,stride,pad,groups,residual,hw",
    [
        (16, 16, 3, 1, 1, 1, True, 14),  # ResNet basic block shape, residual epilogue
        (3, 13, 3, 2, 1, 1, False, 17),  # stride 2, odd channels and size
        (16, 24, 1, 1, 0, 1, False, 9),  # 1x1: no padding stage
        (16, 16, 1, 1, 0, 1, True, 16),  # 1x1, 16x17 pixels: pointwise path, residual
        (16, 32, 3, 1, 1, 4, False, 12),  # grouped
        (16, 16, 3, 2, 1, 16, False, 13),  # depthwise, stride 2
        (8, 8, 5, 1, 2, 1, False, 40),  # width wider than one vector
    ],
)
def test_conv2d_claimed_and_correct(cin, cout, k, stride, pad, groups, residual, hw):
    model = ConvBlock(cin, cout, k, stride, pad, groups, residual)
    x = torch.randn(1 if cin != 3 else 2, cin, hw, hw + 1)
    claimed, mod = run_and_compare(model, [x], [Conv2d(), Fallback()])
    conv = [name for name in claimed if "conv2d" in name]
    assert len(conv) == 1 and claimed[conv[0]] == "Conv2d"
    assert_parallel_vectorized(mod[conv[0]])


def _has_layout_rewrite(func) -> bool:
    from tvm import s_tir

    from tvm_sparse.schedules.cpu.base import LAYOUT_REWRITE_ATTR, iter_stmts

    return any(
        isinstance(node, s_tir.SBlock) and LAYOUT_REWRITE_ATTR in node.annotations
        for node in iter_stmts(func.body)
    )


@pytest.mark.parametrize(
    "knobs,packed",
    [
        ({}, True),  # output-channel vectors, OIHW16o weight copy
        ({"pack_weights": False}, False),  # output-channel vectors on the OIHW weight
        ({"channel_vectors": 0}, False),  # column vectors
        ({"channel_vectors": 4, "accumulators": 28}, True),  # knobs the autotuner may pick
    ],
)
def test_dense_conv_paths(knobs, packed):
    from tvm_sparse.schedules.cpu import Conv2dKnobs
    from tvm_sparse.targets import get_preset

    base = Conv2dKnobs.for_target(get_preset("x86").tvm_target())
    rule = Conv2d(Conv2dKnobs(**{**base.__dict__, **knobs}))
    model = ConvBlock(24, 32, 3, 2, 1, 1, False)
    claimed, mod = run_and_compare(model, [torch.randn(1, 24, 15, 15)], [rule, Fallback()])
    conv = next(name for name in claimed if "conv2d" in name)
    assert claimed[conv] == "Conv2d"
    assert_parallel_vectorized(mod[conv])
    assert _has_layout_rewrite(mod[conv]) == packed


def _is_pointwise_schedule(func) -> bool:
    """The pointwise path leaves the main block iterating over one fused pixel axis."""
    from tvm import s_tir

    from tvm_sparse.schedules.cpu.base import iter_stmts

    return any(
        isinstance(node, s_tir.SBlock) and node.name_hint == "conv2d_nchw_update"
        and len(node.iter_vars) == 6
        for node in iter_stmts(func.body)
    )  # fmt: skip


@pytest.mark.parametrize(
    "cin,cout,hw,pointwise",
    [
        (24, 40, (8, 6), True),  # 48 pixels: three vectors
        (8, 12, (4, 4), True),  # channels not a multiple of anything
        (24, 32, (7, 7), False),  # 49 pixels: not a whole number of vectors
    ],
)
def test_pointwise_conv_path(cin, cout, hw, pointwise):
    model = ConvBlock(cin, cout, 1, 1, 0, 1, False)
    claimed, mod = run_and_compare(model, [torch.randn(2, cin, *hw)], [Conv2d(), Fallback()])
    conv = next(name for name in claimed if "conv2d" in name)
    assert claimed[conv] == "Conv2d"
    assert_parallel_vectorized(mod[conv])
    assert _is_pointwise_schedule(mod[conv]) == pointwise


@pytest.mark.parametrize(
    "channels,stride,hw",
    [
        (8, 1, (24, 64)),  # 4 vectors per row: the depthwise path
        (6, 2, (19, 128)),  # stride 2: column phases split in the tile's padded rows
        (4, 1, (9, 12)),  # rows too narrow: column path
    ],
)
def test_depthwise_paths(channels, stride, hw):
    model = ConvBlock(channels, channels, 3, stride, 1, channels, False)
    claimed, mod = run_and_compare(model, [torch.randn(1, channels, *hw)], [Conv2d(), Fallback()])
    conv = next(name for name in claimed if "conv2d" in name)
    assert claimed[conv] == "Conv2d"
    assert_parallel_vectorized(mod[conv])
    # the padded rows a tile reads, copied in the tile's task
    tile_pad = [
        block.writes[0].source
        for task in parallel_blocks(mod[conv])
        if any("conv2d" in name and not name.startswith("pad") for name in task)
        for name, block in task.items()
        if name.startswith("pad_temp")
    ]
    assert bool(tile_pad) == (hw[1] // stride >= 64)
    if tile_pad and stride > 1:  # (n, c, h, phase, w // stride)
        assert len(tile_pad[0].shape) == 5
