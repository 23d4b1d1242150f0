import numpy as np
import pytest
import tvm

from tvm_sparse.kernels import (
    BSRMatmulKnobs,
    NMMatmulKnobs,
    bsr_matmul,
    nm_matmul,
    nm_matmul_weights,
    to_bsr,
    to_nm,
)
from tvm_sparse.measure import block_mask, nm_mask
from tvm_sparse.targets import get_preset

TARGET = get_preset("x86").tvm_target()  # the host CPU: tests run the code they build
AVX2 = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
AVX512 = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})


def _call(func, args):
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), TARGET)
    tensors = [tvm.runtime.tensor(a) for a in args]
    lib.jit()["main"](*tensors)
    return tensors[-1].numpy()


@pytest.mark.parametrize("block", [(16, 1), (1, 4), (4, 4), (1, 1), (32, 1), (16, 16)])
@pytest.mark.parametrize("m, k, n", [(37, 70, 100), (1, 64, 48), (128, 96, 64)])
def test_bsr_formats_roundtrip_and_kernel(block, m, k, n):
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((n, k)) * block_mask(n, k, block, 0.3, rng)).astype("float32")
    knobs = BSRMatmulKnobs.for_target(TARGET).resolve(block, m, n)
    bsr = to_bsr(weight, block, row_multiple=knobs.group)
    np.testing.assert_array_equal(bsr.to_dense(), weight)
    func = bsr_matmul(m, k, n, block, max(bsr.nnzb, 1), bsr.block_rows, knobs=knobs)
    if bsr.nnzb == 0:
        pytest.skip("no blocks drawn")
    assert func.attrs["tirx.is_scheduled"] and func.attrs["tvm_sparse.kernel"]
    x = rng.standard_normal((m, k)).astype("float32")
    lead = (1,) if knobs.variant == "m" else ()
    data = bsr.data_cr() if knobs.variant == "rows" else bsr.data
    out = _call(
        func,
        [x.reshape(*lead, m, k), data, bsr.indices, bsr.indptr, np.zeros((*lead, m, n), "float32")],
    )
    np.testing.assert_allclose(out.reshape(m, n), x @ weight.T, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "block, unroll, layouts",
    [
        ((1, 1), 4, ("MK", "MN")),
        ((1, 1), 3, ("KM", "NM")),
        ((2, 2), 2, ("MK", "MN")),
        ((8, 1), 3, ("KM", "NM")),
    ],
)
def test_bsr_m_variant_unrolled_over_blocks(block, unroll, layouts):
    # NEON's "m" tile: several blocks per iteration, rows whose block counts leave every tail
    m, k, n = 70, 70, 48
    rng = np.random.default_rng(3)
    weight = (rng.standard_normal((n, k)) * block_mask(n, k, block, 0.3, rng)).astype("float32")
    knobs = BSRMatmulKnobs.for_target(TARGET, variant="m", unroll=unroll, m_vectors=16)
    knobs = knobs.resolve(block, m, n, x_layout=layouts[0], y_layout=layouts[1])
    bsr = to_bsr(weight, block, row_multiple=knobs.group)
    assert len(set(np.diff(bsr.indptr) % unroll)) > 1
    func = bsr_matmul(m, k, n, block, bsr.nnzb, bsr.block_rows, knobs=knobs,
                      x_layout=layouts[0], y_layout=layouts[1])  # fmt: skip
    assert func.attrs["tvm_sparse.knobs"]["unroll"] == unroll
    x = rng.standard_normal((m, k)).astype("float32")
    xin = x if layouts[0] == "MK" else x.T.copy()
    y_shape = (1, m, n) if layouts[1] == "MN" else (1, n, m)
    out = _call(func, [xin[None], bsr.data, bsr.indices, bsr.indptr, np.zeros(y_shape, "float32")])
    out = out[0] if layouts[1] == "MN" else out[0].T
    np.testing.assert_allclose(out, x @ weight.T, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("lanes", [4, 8, 16])
@pytest.mark.parametrize("m, k, n, y_layout", [(45, 40, 72, "MN"), (45, 40, 72, "NM"),
                                               (33, 96, 24, "MN")])  # fmt: skip
def test_bsr_m_variant_transposes_rows_per_task(lanes, m, k, n, y_layout):
    # an (M, K) input: one parallel loop whose tasks transpose their own rows (whole
    # lanes x lanes blocks through registers, ragged rows and columns element by element), the
    # outputs cut into chunks where K <= N; a batch of two
    rng = np.random.default_rng(5)
    weight = (rng.standard_normal((n, k)) * block_mask(n, k, (1, 1), 0.3, rng)).astype("float32")
    knobs = BSRMatmulKnobs(lanes=lanes, variant="m").resolve(
        (1, 1), m, n, batch=2, y_layout=y_layout
    )
    bsr = to_bsr(weight, (1, 1), row_multiple=knobs.group)
    func = bsr_matmul(m, k, n, (1, 1), bsr.nnzb, bsr.block_rows, knobs=knobs, batch=2,
                      y_layout=y_layout)  # fmt: skip
    assert func.script().count("T.parallel(") == 1
    x = rng.standard_normal((2, m, k)).astype("float32")
    y_shape = (2, m, n) if y_layout == "MN" else (2, n, m)
    out = _call(func, [x, bsr.data, bsr.indices, bsr.indptr, np.zeros(y_shape, "float32")])
    out = out if y_layout == "MN" else out.transpose(0, 2, 1)
    np.testing.assert_allclose(out, x @ weight.T, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("split", ["rows", "outputs"])
@pytest.mark.parametrize("m, y_layout", [(49, "NM"), (70, "MN"), (64, "NM")])
def test_bsr_m_variant_on_a_km_input_splits_by_rows_or_by_outputs(split, m, y_layout):
    # a (K, M) input read where it lies: tiles of whole vectors, the ragged rest of the rows
    # in a narrower tile ("outputs") or padded in a task's own copy ("rows"); a batch of two
    rng = np.random.default_rng(6)
    k, n = 40, 48
    weight = (rng.standard_normal((n, k)) * block_mask(n, k, (1, 1), 0.3, rng)).astype("float32")
    knobs = BSRMatmulKnobs.for_target(TARGET, variant="m", split=split).resolve(
        (1, 1), m, n, batch=2, x_layout="KM", y_layout=y_layout, k=k
    )
    assert knobs.split == split
    bsr = to_bsr(weight, (1, 1), row_multiple=knobs.group)
    func = bsr_matmul(m, k, n, (1, 1), bsr.nnzb, bsr.block_rows, knobs=knobs, batch=2,
                      x_layout="KM", y_layout=y_layout)  # fmt: skip
    assert func.attrs["tvm_sparse.knobs"]["split"] == split
    x = rng.standard_normal((2, k, m)).astype("float32")
    y_shape = (2, m, n) if y_layout == "MN" else (2, n, m)
    out = _call(func, [x, bsr.data, bsr.indices, bsr.indptr, np.zeros(y_shape, "float32")])
    out = out if y_layout == "NM" else out.transpose(0, 2, 1)
    np.testing.assert_allclose(out, np.einsum("nk,bkm->bnm", weight, x), atol=1e-4, rtol=1e-4)


def test_a_km_input_splits_by_rows_where_they_are_few_or_k_is_long():
    knobs = BSRMatmulKnobs.for_target(AVX512)
    split = lambda m, k, n: knobs.resolve((1, 1), m, n, x_layout="KM", y_layout="NM", k=k).split  # noqa: E731
    assert split(49, 960, 160) == "rows"  # a 7x7 image
    assert split(784, 1152, 128) == "rows"  # an im2col matrix: 3x3 over 128 channels
    assert split(196, 64, 384) == "outputs"  # an inverted residual's expansion
    assert split(3136, 24, 144) == "outputs"
    assert knobs.resolve((1, 1), 49, 160, x_layout="MK").split == "rows"


def test_neon_defaults_tile_16_vectors_and_unroll_the_m_variant():
    a76 = get_preset("arm-cortex-a76").tvm_target()
    knobs = BSRMatmulKnobs.for_target(a76).resolve((1, 1), 128, 3072)
    assert (knobs.variant, knobs.lanes, knobs.m_tile, knobs.unroll) == ("m", 4, 64, 4)
    assert BSRMatmulKnobs.for_target(a76).resolve((2, 1), 128, 3072).m_tile == 32
    assert BSRMatmulKnobs.for_target(AVX2).resolve((1, 1), 128, 3072).unroll == 1
    nm = NMMatmulKnobs.for_target(a76).resolve(128, 3072)
    assert (nm.m_tile, nm.unroll) == (64, 2)
    assert NMMatmulKnobs.for_target(AVX512).resolve(128, 3072).unroll == 1


@pytest.mark.parametrize("m_tile, row_block", [(5, 3), (16, 16), (3, 2)])
def test_bsr_rows_tasks_of_several_block_rows(m_tile, row_block):
    # 7 block rows (the last one short) in tasks of row_block, 37 rows in tiles of m_tile.
    rng = np.random.default_rng(2)
    m, k, n, block = 37, 70, 100, (16, 1)
    weight = (rng.standard_normal((n, k)) * block_mask(n, k, block, 0.3, rng)).astype("float32")
    knobs = BSRMatmulKnobs.for_target(TARGET, variant="rows", m_tile=m_tile, row_block=row_block)
    knobs = knobs.resolve(block, m, n)
    assert (knobs.m_tile, knobs.row_block) == (m_tile, min(row_block, 7))
    bsr = to_bsr(weight, block)
    func = bsr_matmul(m, k, n, block, bsr.nnzb, bsr.block_rows, knobs=knobs)
    x = rng.standard_normal((m, k)).astype("float32")
    out = _call(func, [x, bsr.data_cr(), bsr.indices, bsr.indptr, np.zeros((m, n), "float32")])
    np.testing.assert_allclose(out, x @ weight.T, atol=1e-4, rtol=1e-4)


def test_bsr_rows_defaults_fill_avx512_registers_and_leave_tasks():
    # BERT FFN, 192 block rows: 16 accumulators (32 zmm), 12 block rows per task -> 16 tasks.
    knobs = BSRMatmulKnobs.for_target(AVX512).resolve((16, 1), 128, 3072)
    assert (knobs.variant, knobs.m_tile, knobs.row_block) == ("rows", 16, 12)
    assert BSRMatmulKnobs.for_target(AVX2).resolve((16, 1), 128, 3072).m_tile == 4
    assert BSRMatmulKnobs.for_target(AVX512).resolve((16, 1), 128, 64).row_block == 1


@pytest.mark.parametrize("y_layout", ["MN", "NM"])
def test_bsr_batched_km_layout(y_layout):
    rng = np.random.default_rng(1)
    b, m, k, n, block = 3, 20, 30, 40, (4, 4)
    weight = (rng.standard_normal((n, k)) * block_mask(n, k, block, 0.4, rng)).astype("float32")
    knobs = BSRMatmulKnobs.for_target(TARGET).resolve(
        block, m, n, batch=b, x_layout="KM", y_layout=y_layout
    )
    bsr = to_bsr(weight, block, row_multiple=knobs.group)
    func = bsr_matmul(
        m,
        k,
        n,
        block,
        bsr.nnzb,
        bsr.block_rows,
        knobs=knobs,
        batch=b,
        x_layout="KM",
        y_layout=y_layout,
    )
    x = rng.standard_normal((b, k, m)).astype("float32")
    shape = (b, m, n) if y_layout == "MN" else (b, n, m)
    out = _call(func, [x, bsr.data, bsr.indices, bsr.indptr, np.zeros(shape, "float32")])
    ref = np.einsum("bkm,nk->bmn", x, weight)
    got = out if y_layout == "MN" else out.transpose(0, 2, 1)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_knobs_follow_target_vector_width():
    assert BSRMatmulKnobs.for_target(AVX512).lanes == 16
    assert BSRMatmulKnobs.for_target(AVX2).lanes == 8
    assert BSRMatmulKnobs.for_target(AVX2).resolve((16, 1), 128, 256).variant == "rows"
    assert BSRMatmulKnobs.for_target(AVX512).resolve((1, 4), 128, 256).variant == "m"
    assert BSRMatmulKnobs.for_target(AVX512).resolve((1, 4), 1, 256).variant == "gemv"
    with pytest.raises(ValueError, match="variant"):
        BSRMatmulKnobs(variant="fast")


@pytest.mark.parametrize(
    "nm, overrides",
    [
        ((2, 4), {}),
        # k tiles with a short last one, several tasks with a short last one, an m tail
        ((2, 4), {"k_tile": 8, "m_tile": 16, "group": 16}),
        ((4, 8), {"k_tile": 16, "group": 32}),
        ((1, 4), {"m_tile": 8}),
        # NEON's tile: 16 vectors, kept weights two or three per iteration (a tail of one)
        ((2, 4), {"m_vectors": 16, "unroll": 2, "k_tile": 12}),
        ((2, 4), {"m_vectors": 16, "unroll": 3}),
    ],
)
def test_nm_kernel(nm, overrides):
    rng = np.random.default_rng(2)
    m, k, n = 37, 70, 100
    weight = (rng.standard_normal((n, k)) * nm_mask(n, k, nm, rng)).astype("float32")
    knobs = NMMatmulKnobs.for_target(TARGET, **overrides).resolve(m, n, nm)
    mat = to_nm(weight, nm, row_multiple=knobs.group)
    np.testing.assert_array_equal(mat.to_dense(), weight)
    func = nm_matmul(m, k, n, nm, mat.values.shape[0], knobs=knobs)
    x = rng.standard_normal((m, k)).astype("float32")
    out = _call(func, [x, *nm_matmul_weights(mat, knobs), np.zeros((m, n), "float32")])
    np.testing.assert_allclose(out, x @ weight.T, atol=1e-4, rtol=1e-4)


def test_nm_format_refuses_a_weight_off_its_pattern():
    with pytest.raises(ValueError, match="2:4"):
        to_nm(np.ones((4, 8), "float32"), (2, 4))
