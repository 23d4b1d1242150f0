import pytest
import torch
import torch.nn.functional as F
import tvm
from schedule_testing import (
    LANES,
    TARGET,
    assert_parallel_vectorized,
    run_and_compare,
    to_fused_relax,
)
from tvm import s_tir, tirx

from tvm_sparse.schedules.cpu import Conv2dNHWC, Conv2dNHWCKnobs, Fallback, Matmul, Pool
from tvm_sparse.schedules.cpu.base import LAYOUT_REWRITE_ATTR, iter_stmts


class ConvBlock(torch.nn.Module):
    def __init__(self, cin, cout, k, stride, groups, residual, relu6=False):
        super().__init__()
        self.conv = torch.nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups)
        self.bn = torch.nn.BatchNorm2d(cout)
        self.bn.running_mean.uniform_(-1, 1)
        self.bn.running_var.uniform_(0.5, 2)
        self.residual, self.relu6 = residual, relu6

    def forward(self, x):
        y = self.bn(self.conv(x))
        if self.residual:
            y = y + x
        return F.relu6(y) if self.relu6 else F.relu(y)


def _conv_funcs(claimed):
    return [name for name in claimed if "conv2d" in name]


def _vector_lanes(func) -> set[int]:
    """Vector widths of the conv and its epilogue (a whole-image padding copy excluded: it
    runs rows of 3-channel pixels as one vector, which LLVM splits)."""
    return {
        int(loop.extent)
        for loop in iter_stmts(func.body)
        if isinstance(loop, tirx.For)
        and loop.kind == tirx.ForKind.VECTORIZED
        and not any(
            isinstance(b, s_tir.SBlock) and b.name_hint == "pad_temp" for b in iter_stmts(loop.body)
        )
    }


@pytest.mark.parametrize(
    "cin,cout,k,stride,groups,residual,hw",
    [
        (16, 16, 3, 1, 1, True, 14),  # ResNet basic block shape, residual epilogue
        (3, 32, 3, 2, 1, False, 17),  # stem: 3 input channels, stride 2, odd size
        (32, 24, 3, 1, 1, False, 9),  # 24 output channels: 8-lane vectors
        (64, 64, 3, 1, 1, False, 7),  # 7-pixel rows, channel blocks of 16
        (16, 32, 1, 2, 1, False, 12),  # strided 1x1 (a downsample): a conv, not a matmul
        (48, 48, 3, 1, 48, True, 14),  # depthwise
        (96, 96, 3, 2, 96, False, 15),  # depthwise, stride 2, odd size
        (24, 24, 3, 1, 24, False, 8),  # depthwise on 8-lane vectors
    ],
)
def test_nhwc_conv_claimed_and_correct(cin, cout, k, stride, groups, residual, hw):
    model = ConvBlock(cin, cout, k, stride, groups, residual, relu6=groups > 1)
    x = torch.randn(1 if cin != 3 else 2, cin, hw, hw + 1)
    claimed, mod = run_and_compare(model, [x], [Conv2dNHWC(), Fallback()], nhwc=True)
    (conv,) = _conv_funcs(claimed)
    assert claimed[conv] == "Conv2dNHWC", claimed
    func = mod[conv]
    assert_parallel_vectorized(func)
    # every vector is a power-of-two run of channels of one SIMD register or less
    assert all(lanes in (4, 8, 16) for lanes in _vector_lanes(func)), func.script()


@pytest.mark.parametrize("channels,stride", [(70, 2), (145, 1)])
def test_depthwise_conv_of_odd_channel_counts_keeps_its_schedule(channels, stride):
    # channel counts a shrunk layer can leave: vectors of 2 lanes, or none; the register
    # tiles still hold, where the generic reduction schedule would run it an order slower
    model = ConvBlock(channels, channels, 3, stride, channels, False, relu6=True)
    claimed, _ = run_and_compare(model, [torch.randn(1, channels, 9, 10)],
                                 [Conv2dNHWC(), Fallback()], nhwc=True)  # fmt: skip
    (conv,) = _conv_funcs(claimed)
    assert claimed[conv] == "Conv2dNHWC", claimed


@pytest.mark.parametrize("channels,stride,hw", [(64, 1, 12), (96, 2, 16), (32, 1, 7)])
def test_depthwise_tile_of_two_channel_vectors(channels, stride, hw):
    # NEON's default depthwise tile, 2 channel vectors by 4 pixels, on this machine's vectors
    knobs = Conv2dNHWCKnobs(vector_lanes=LANES, depthwise_vectors=2, depthwise_columns=4)
    model = ConvBlock(channels, channels, 3, stride, channels, False, relu6=True)
    claimed, _ = run_and_compare(model, [torch.randn(1, channels, hw, hw)],
                                 [Conv2dNHWC(knobs), Fallback()], nhwc=True)  # fmt: skip
    (conv,) = _conv_funcs(claimed)
    assert claimed[conv] == "Conv2dNHWC", claimed


@pytest.mark.parametrize("stride,hw", [(1, 7), (1, 14), (2, 14), (2, 28)])
def test_depthwise_row_tile_of_seven_pixels(stride, hw):
    # NEON's tile on rows that 4 does not divide, 2 vectors by 7 pixels (at stride 2 each
    # pixel's taps in turn), on this machine's vectors
    knobs = Conv2dNHWCKnobs(
        vector_lanes=LANES, depthwise_vectors=2, depthwise_columns=4, depthwise_row_columns=7
    )
    model = ConvBlock(64, 64, 3, stride, 64, False, relu6=True)
    claimed, _ = run_and_compare(model, [torch.randn(1, 64, hw, hw)],
                                 [Conv2dNHWC(knobs), Fallback()], nhwc=True)  # fmt: skip
    (conv,) = _conv_funcs(claimed)
    assert claimed[conv] == "Conv2dNHWC", claimed


def test_neon_defaults_tile_depthwise_convs_in_two_channel_vectors():
    from tvm_sparse.targets import get_preset

    knobs = Conv2dNHWCKnobs.for_target(get_preset("arm-cortex-a72").tvm_target())
    assert (knobs.depthwise_vectors, knobs.depthwise_columns) == (2, 4)
    assert knobs.depthwise_row_columns == 7
    x86 = Conv2dNHWCKnobs.for_target(TARGET)
    assert (x86.depthwise_vectors, x86.depthwise_columns) == (1, 8)
    assert x86.depthwise_row_columns == 0


def test_pointwise_conv_becomes_a_matmul():
    model = ConvBlock(32, 48, 1, 1, 1, False)
    claimed, _ = run_and_compare(model, [torch.randn(1, 32, 14, 14)], [Conv2dNHWC(), Matmul(),
                                 Fallback()], nhwc=True)  # fmt: skip
    assert "Matmul" in claimed.values() and not _conv_funcs(claimed), claimed


@pytest.mark.parametrize("knobs", [Conv2dNHWCKnobs(channel_block=0), Conv2dNHWCKnobs()])
def test_dense_conv_packs_weights_per_tile(knobs):
    model = ConvBlock(32, 128, 3, 1, 1, False)  # 8 channel vectors: several weight panels
    claimed, mod = run_and_compare(model, [torch.randn(1, 32, 10, 10)], [Conv2dNHWC(knobs),
                                   Fallback()], nhwc=True)  # fmt: skip
    (conv,) = _conv_funcs(claimed)
    assert any(
        isinstance(node, s_tir.SBlock) and LAYOUT_REWRITE_ATTR in node.annotations
        for node in iter_stmts(mod[conv].body)
    )


def test_every_knob_draw_schedules_and_stays_correct():
    model = ConvBlock(32, 32, 3, 1, 1, True)
    x = torch.randn(1, 32, 8, 8)
    func = next(
        f for gv, f in to_fused_relax(model, x, nhwc=True).functions_items()
        if "conv2d" in gv.name_hint
    )  # fmt: skip
    rule = Conv2dNHWC()
    sampled = rule.sample(func, TARGET)
    assert sampled is not None
    _, sampler = sampled
    assert {"tile_vectors", "tile_columns", "channel_block", "pack_weights"} <= set(sampler.names)
    for decisions in ([1], [0, 1], [0, 0, 1], [0, 0, 0, 1]):
        sch, _ = rule.sample(func, TARGET, decisions)
        assert sch is not None


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_nhwc_pooling_vectorises_channels(kind):
    class ConvPool(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(8, 32, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return F.max_pool2d(y, 3, 2, 1) if kind == "max" else F.avg_pool2d(y, 2)

    claimed, mod = run_and_compare(ConvPool(), [torch.randn(1, 8, 15, 15)],
                                   [Conv2dNHWC(), Pool(), Fallback()], nhwc=True)  # fmt: skip
    (pool,) = [n for n in claimed if "pool" in n]
    assert claimed[pool] == "Pool"
    assert _vector_lanes(mod[pool]) == {LANES}, mod[pool].script()


def test_short_rows_split_into_tasks_every_core_gets_alike():
    # 64 channels of 28x28: chunks of 4 rows would make 7 tasks for 2 cores (one idle for a
    # seventh of the time); 2 rows a chunk make 14
    model = ConvBlock(32, 64, 3, 1, 1, False)
    target = tvm.target.Target({**TARGET.export(), "num-cores": 2})
    claimed, mod = run_and_compare(
        model, [torch.randn(1, 32, 28, 28)], [Conv2dNHWC(), Fallback()], target=target, nhwc=True
    )
    (conv,) = _conv_funcs(claimed)
    extents = [
        int(loop.extent)
        for loop in iter_stmts(mod[conv].body)
        if isinstance(loop, tirx.For)
        and loop.kind == tirx.ForKind.PARALLEL
        and any(  # the conv's tiles (a register tile inside), not the padding's or weights'
            isinstance(s, tirx.For) and s.kind == tirx.ForKind.UNROLLED
            for s in iter_stmts(loop.body)
        )
    ]
    assert extents and all(e % 2 == 0 for e in extents), mod[conv].script()


def _task_loops(func) -> list[tuple[int, int]]:
    """``(tasks, extent of the serial loop around the register tile)`` of each parallel loop
    of the conv: for a depthwise conv, the channel vectors each tile of pixels walks."""

    def tile_loop(stmt):
        body = stmt.body
        children = list(body.seq) if isinstance(body, tirx.SeqStmt) else [body]
        return any(isinstance(c, tirx.For) and c.kind == tirx.ForKind.UNROLLED for c in children)

    found = []
    for loop in iter_stmts(func.body):
        if isinstance(loop, tirx.For) and loop.kind == tirx.ForKind.PARALLEL:
            inner = next(
                (s for s in iter_stmts(loop.body) if isinstance(s, tirx.For)
                 and s.kind == tirx.ForKind.SERIAL and tile_loop(s)), None
            )  # fmt: skip
            found.append((int(loop.extent), int(inner.extent) if inner is not None else 1))
    return found


@pytest.mark.parametrize(
    "channels,hw,tasks,split",
    [
        (96, 16, 4, 1),  # 4 whole rows a task, each walking all the channel vectors
        (64, 7, 14, 2),  # 7 tasks of 7 pixels for 2 cores: the channel vectors split in two
    ],
)
def test_depthwise_tasks_walk_channel_vectors(channels, hw, tasks, split):
    vectors = channels // LANES // split
    model = ConvBlock(channels, channels, 3, 1, channels, False, relu6=True)
    target = tvm.target.Target({**TARGET.export(), "num-cores": 2})
    claimed, mod = run_and_compare(
        model, [torch.randn(1, channels, hw, hw)], [Conv2dNHWC(), Fallback()], target=target,
        nhwc=True,
    )  # fmt: skip
    (conv,) = _conv_funcs(claimed)
    assert (tasks, vectors) in _task_loops(mod[conv]), mod[conv].script()


@pytest.mark.parametrize("row_tasks", [-1, 0, 1])
@pytest.mark.parametrize("cin,cout,k,stride", [(32, 64, 1, 2), (64, 64, 3, 1)])
def test_task_order_is_correct_both_ways(cin, cout, k, stride, row_tasks):
    model = ConvBlock(cin, cout, k, stride, 1, False)
    knobs = Conv2dNHWCKnobs(row_tasks=row_tasks)
    claimed, _ = run_and_compare(model, [torch.randn(1, cin, 12, 12)], [Conv2dNHWC(knobs),
                                 Fallback()], nhwc=True)  # fmt: skip
    assert claimed[_conv_funcs(claimed)[0]] == "Conv2dNHWC"


def test_task_order_follows_the_larger_operand():
    from tvm_sparse.schedules.cpu.conv2d_nhwc import _row_tasks, find_nhwc_conv

    def decided(cin, cout, k, hw):
        model = ConvBlock(cin, cout, k, 1, 1, False)
        func = next(
            f for gv, f in to_fused_relax(model, torch.randn(1, cin, hw, hw), nhwc=True)
            .functions_items() if "conv2d" in gv.name_hint
        )  # fmt: skip
        sch = s_tir.Schedule(func)
        conv = find_nhwc_conv(sch)
        return _row_tasks(sch, conv.main, 1 - conv.data_pos, Conv2dNHWCKnobs())

    assert decided(16, 32, 3, 56)  # 50k input values, 4.6k weights: rows
    assert not decided(128, 128, 3, 7)  # 10k input values, 147k weights: channel tiles


def test_padded_image_rows_are_single_vectors():
    # the stem's pad (226 pixels x 3 channels a row): each row one vector, its index x * 3 + c,
    # on AVX2 (85 vectors) as on AVX-512, never vectors across rows (lanes divided from the
    # fused index)
    model = ConvBlock(3, 32, 3, 2, 1, False)
    claimed, mod = run_and_compare(model, [torch.randn(1, 3, 224, 224)], [Conv2dNHWC(),
                                   Fallback()], nhwc=True)  # fmt: skip
    (conv,) = _conv_funcs(claimed)
    pad_vectors = [
        int(loop.extent)
        for loop in iter_stmts(mod[conv].body)
        if isinstance(loop, tirx.For)
        and loop.kind == tirx.ForKind.VECTORIZED
        and any(
            isinstance(b, s_tir.SBlock) and b.name_hint.startswith("pad_temp")
            for b in iter_stmts(loop.body)
        )
    ]
    assert pad_vectors == [226 * 3], mod[conv].script()
