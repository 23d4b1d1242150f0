"""The mma.sp m16n8k32 fragment maps against TVM's own hardware test of ``ptx_mma_sp``, the
compile-time compression of 2:4 fp16 weights, and the NumPy model of the instruction."""

import itertools

import numpy as np
import pytest
from mma_sp_emulator import PAIRS, emulate_mma_sp, two_four

from tvm_sparse.kernels.gpu import to_mma_sp
from tvm_sparse.kernels.gpu.mma_sp_layout import a_element, b_element, c_element, meta_slot


def _upstream_meta(position: np.ndarray) -> np.ndarray:
    """The 16 metadata words of a 16x32 tile as TVM's sm_80 ``ptx_mma_sp`` test
    (``get_meta_m16n8k32_half``) builds them, from ``(16, 8, 2)`` kept positions; thread
    ``lane`` loads word ``lane // 4 * 2 + lane % 2``."""
    position = position.reshape(16, 2, 8)
    words = np.zeros((8, 2), np.uint64)
    for i, half in itertools.product(range(8), range(2)):
        shift = 0
        for row in (i, i + 8):
            for j in range(8):
                words[i, half] |= np.uint64(int(position[row, half, j]) << shift)
                shift += 2
    return words.reshape(16).astype(np.uint32)


def test_fragment_maps_match_tvms_hardware_test():
    """Its loads: a[i] = A[(i % 4) // 2 * 8 + t // 4, i // 4 * 8 + t % 4 * 2 + i % 2],
    b[i] = B[i // 2 * 8 + t % 4 * 2 + i % 2, t // 4], C[i // 2 * 8 + t // 4, t % 4 * 2 + i % 2]
    for element i (register i // 2, half i % 2) of thread t."""
    for t, i in itertools.product(range(32), range(8)):
        reg, half = i // 2, i % 2
        assert a_element(t, reg, half) == (
            (i % 4) // 2 * 8 + t // 4,
            i // 4 * 8 + t % 4 * 2 + i % 2,
        )
        assert b_element(t, reg, half) == (i // 2 * 8 + t % 4 * 2 + i % 2, t // 4)
        if i < 4:
            assert c_element(t, i) == (i // 2 * 8 + t // 4, t % 4 * 2 + i % 2)
        assert meta_slot(t) == t // 4 * 2 + t % 2


def test_compression_matches_tvms_hardware_test():
    rng = np.random.default_rng(0)
    weight = two_four(16, 32, rng, sparse_groups=False)
    mat = to_mma_sp(weight)
    groups = weight.reshape(16, 8, 4)
    position = np.array([[np.flatnonzero(g) for g in row] for row in groups])  # (16, 8, 2)
    np.testing.assert_array_equal(mat.metadata[0, 0], _upstream_meta(position))
    kept = weight[weight != 0].reshape(16, 16)
    halves = mat.values[0, 0].view(np.float16).reshape(32, 8)
    for t, i in itertools.product(range(32), range(8)):
        assert halves[t, i] == kept[(i % 4) // 2 * 8 + t // 4, i // 4 * 8 + t % 4 * 2 + i % 2]


@pytest.mark.parametrize("n, k", [(16, 32), (37, 70), (5, 33), (64, 256)])
def test_compression_round_trips(n, k):
    weight = two_four(n, k, np.random.default_rng(n + k))
    mat = to_mma_sp(weight)
    assert mat.values.shape == (-(-n // 16), -(-k // 32), 32, 4)
    assert mat.metadata.shape == (-(-n // 16), -(-k // 32), 16)
    assert mat.values.dtype == mat.metadata.dtype == np.uint32
    np.testing.assert_array_equal(mat.to_dense(), weight)


def test_every_pair_is_encoded_increasing():
    weight = np.zeros((16, 32), "float16")
    for g, pair in enumerate([*PAIRS, (3,), (0,), ()]):  # 2, 1 and 0 nonzeros
        weight[g, [4 * (g % 8) + p for p in pair]] = g + 1
    mat = to_mma_sp(weight)
    fields = (mat.metadata[0, 0][:, None] >> (2 * np.arange(16, dtype=np.uint32))) & 3
    pairs = fields.reshape(16, 8, 2)
    assert (pairs[..., 0] < pairs[..., 1]).all()
    np.testing.assert_array_equal(mat.to_dense(), weight)


def test_dense_weight_is_refused():
    weight = np.ones((16, 32), "float16")
    weight[:, 1::4] = 0
    with pytest.raises(ValueError, match="not 2:4 sparse: row 0, inputs 0-3 hold 3 nonzeros"):
        to_mma_sp(weight)
    with pytest.raises(ValueError, match="2-D"):
        to_mma_sp(np.zeros(8, "float16"))


def _warp_registers(a_dense: np.ndarray, b_dense: np.ndarray):
    """What the 32 threads hold for ``a_dense`` (16x32, 2:4) and ``b_dense`` (32x8)."""
    mat = to_mma_sp(a_dense)
    b = np.zeros((32, 4, 2), np.float16)
    for t, reg, half in itertools.product(range(32), range(4), range(2)):
        b[t, reg, half] = b_dense[b_element(t, reg, half)]
    e = mat.metadata[0, 0][[meta_slot(t) for t in range(32)]]
    return mat.values[0, 0], b.view(np.uint32).reshape(32, 4), e


@pytest.mark.parametrize("selector", [0, 1])
def test_emulated_mma_sp_is_a_dense_matmul(selector):
    rng = np.random.default_rng(selector)
    a_dense = two_four(16, 32, rng)
    b_dense = rng.standard_normal((32, 8)).astype("float16")
    c_dense = rng.standard_normal((16, 8)).astype("float32")
    a, b, e = _warp_registers(a_dense, b_dense)
    if selector:  # the pair of threads 2, 3 of each group supplies the words instead
        e = np.roll(e, 2)
    c = np.array([[c_dense[c_element(t, i)] for i in range(4)] for t in range(32)])
    d = emulate_mma_sp(a, b, c, e, selector)
    ref = a_dense.astype("f8") @ b_dense.astype("f8") + c_dense
    got = np.zeros((16, 8))
    for t, i in itertools.product(range(32), range(4)):
        got[c_element(t, i)] = d[t, i]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(AssertionError):  # the other pair's words are not the metadata
        np.testing.assert_allclose(
            emulate_mma_sp(a, b, c, np.roll(e, 2), selector), d, rtol=1e-5, atol=1e-5
        )


def test_emulator_rejects_metadata_the_isa_leaves_undefined():
    rng = np.random.default_rng(3)
    a, b, e = _warp_registers(two_four(16, 32, rng), np.ones((32, 8), "float16"))
    bad = e.copy()
    bad[0] = (bad[0] & ~np.uint32(0xF)) | np.uint32(0b0001)  # group (1, 0): decreasing
    with pytest.raises(ValueError, match="increasing"):
        emulate_mma_sp(a, b, np.zeros((32, 4), "float32"), bad)
