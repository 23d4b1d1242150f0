"""Bias add and activation applied by the sparse kernels as they store, against PyTorch."""

import numpy as np
import pytest
import torch
import tvm

from tvm_sparse.kernels import (
    BSRMatmulKnobs,
    Epilogue,
    NMMatmulKnobs,
    bsr_matmul,
    nm_matmul,
    to_bsr,
    to_nm,
)
from tvm_sparse.kernels.nm_matmul import nm_matmul_weights
from tvm_sparse.measure import block_mask, nm_mask
from tvm_sparse.targets import get_preset

TARGET = get_preset("x86").tvm_target()  # the host CPU: tests run the code they build

TORCH = {
    None: lambda t: t,
    "relax.nn.relu": torch.relu,
    "relax.nn.gelu": torch.nn.functional.gelu,
    "relax.nn.gelu[fast]": torch.nn.functional.gelu,  # erf as UseFastMath's polynomial
    "relax.nn.gelu_tanh": lambda t: torch.nn.functional.gelu(t, approximate="tanh"),
    "relax.nn.silu": torch.nn.functional.silu,
    "relax.sigmoid": torch.sigmoid,
}


def _call(func, args):
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), TARGET)
    tensors = [tvm.runtime.tensor(a) for a in args]
    lib.jit()["main"](*tensors)
    return tensors[-1].numpy()


def _reference(x, weight, bias, activation):
    out = torch.nn.functional.linear(
        torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias)
    )
    return TORCH[activation](out).numpy()


@pytest.mark.parametrize("activation", sorted(TORCH, key=str))
@pytest.mark.parametrize(
    "variant, m, block",
    [("rows", 37, (16, 1)), ("m", 37, (1, 1)), ("gemv", 1, (1, 1)), ("rows", 24, (8, 1))],
)
def test_bsr_kernels_apply_bias_and_activation(activation, variant, m, block):
    rng = np.random.default_rng(0)
    k, n = 64, 100  # n not a multiple of the block rows: the tail stores apply it too
    weight = (rng.standard_normal((n, k)) * block_mask(n, k, block, 0.3, rng)).astype("float32")
    x = rng.standard_normal((m, k)).astype("float32")
    bias = rng.standard_normal(n).astype("float32")
    knobs = BSRMatmulKnobs.for_target(TARGET, variant=variant).resolve(block, m, n)
    bsr = to_bsr(weight, block, row_multiple=knobs.group, nonempty=True)
    epilogue = Epilogue(bias=True, activation=activation)
    func = bsr_matmul(m, k, n, block, bsr.nnzb, bsr.block_rows, knobs=knobs, epilogue=epilogue)
    lead = (1,) if knobs.variant == "m" else ()
    data = bsr.data_cr() if knobs.variant == "rows" else bsr.data
    args = [x.reshape(*lead, m, k), data, bsr.indices, bsr.indptr, bias]
    out = _call(func, [*args, np.zeros((*lead, m, n), "float32")])
    np.testing.assert_allclose(
        out.reshape(m, n), _reference(x, weight, bias, activation), atol=1e-4, rtol=1e-4
    )


def test_bsr_kernel_in_channels_first_layout_adds_the_bias_per_output_row():
    # the layout of a convolution: X is (batch, K, HW), Y (batch, N, HW); bias per channel N
    rng = np.random.default_rng(1)
    b, hw, k, n, block = 2, 30, 24, 40, (4, 4)
    weight = (rng.standard_normal((n, k)) * block_mask(n, k, block, 0.4, rng)).astype("float32")
    knobs = BSRMatmulKnobs.for_target(TARGET).resolve(
        block, hw, n, batch=b, x_layout="KM", y_layout="NM"
    )
    bsr = to_bsr(weight, block, row_multiple=knobs.group)
    func = bsr_matmul(
        hw, k, n, block, bsr.nnzb, bsr.block_rows, knobs=knobs, batch=b, x_layout="KM",
        y_layout="NM", epilogue=Epilogue(bias=True, activation="relax.nn.relu"),
    )  # fmt: skip
    x = rng.standard_normal((b, k, hw)).astype("float32")
    bias = rng.standard_normal(n).astype("float32")
    out = _call(func, [x, bsr.data, bsr.indices, bsr.indptr, bias, np.zeros((b, n, hw), "f")])
    ref = np.maximum(np.einsum("nk,bkm->bnm", weight, x) + bias[None, :, None], 0)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("m", [1, 37])
def test_nm_kernel_applies_bias_and_activation(m):
    rng = np.random.default_rng(2)
    k, n = 64, 96
    weight = (rng.standard_normal((n, k)) * nm_mask(n, k, (2, 4), rng)).astype("float32")
    knobs = NMMatmulKnobs.for_target(TARGET).resolve(m, n, (2, 4))
    mat = to_nm(weight, (2, 4), row_multiple=knobs.group)
    func = nm_matmul(
        m, k, n, (2, 4), mat.values.shape[0], knobs=knobs,
        epilogue=Epilogue(bias=True, activation="relax.nn.gelu"),
    )  # fmt: skip
    x = rng.standard_normal((m, k)).astype("float32")
    bias = rng.standard_normal(n).astype("float32")
    out = _call(func, [x, *nm_matmul_weights(mat, knobs), bias, np.zeros((m, n), "float32")])
    np.testing.assert_allclose(
        out, _reference(x, weight, bias, "relax.nn.gelu"), atol=1e-4, rtol=1e-4
    )


def test_an_activation_without_a_fused_form_is_refused():
    with pytest.raises(ValueError, match="no fused form"):
        Epilogue(bias=True, activation="relax.nn.softmax")
    assert not Epilogue() and Epilogue(bias=True).label == "bias"
    assert Epilogue(True, "relax.nn.gelu_tanh").label == "bias, gelu_tanh"


def test_fast_gelu_matches_topi_fast_erf_and_the_exact_gelu():
    # the epilogue's fast GELU is the one UseFastMath gives an unfused GELU (TOPI's fast_erf)
    from tvm import te, topi

    from tvm_sparse.kernels.epilogue import ACTIVATIONS, FAST_GELU

    x = np.linspace(-6, 6, 4097, dtype="float32")
    p = te.placeholder(x.shape, "float32")
    via_topi = te.compute(x.shape, lambda i: p[i] * (0.5 + topi.fast_erf(p * 0.5**0.5)[i] * 0.5))
    expected = _call(te.create_prim_func([p, via_topi]), [x, np.zeros_like(x)])

    @tvm.script.tirx.prim_func
    def fused(a: tvm.script.tirx.Buffer((4097,), "float32"),
              b: tvm.script.tirx.Buffer((4097,), "float32")):  # fmt: skip
        for i in range(4097):
            b[i] = ACTIVATIONS[FAST_GELU](a[i])

    out = _call(fused, [x, np.zeros_like(x)])
    np.testing.assert_allclose(out, expected, atol=1e-6, rtol=1e-6)
    exact = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, exact, atol=1e-6, rtol=1e-5)
