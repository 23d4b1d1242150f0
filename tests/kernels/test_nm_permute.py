"""The x86 N:M kernel that permutes broadcast inputs: exact against PyTorch for every group
size it takes, on AVX2 and (where this host runs it) AVX-512, with row and output tails and a
fused epilogue; and where it does not apply."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm.target.codegen import llvm_get_system_cpu, target_has_features

from tvm_sparse.kernels.epilogue import PLAIN, Epilogue
from tvm_sparse.kernels.formats import to_nm
from tvm_sparse.kernels.nm_permute import (
    NMPermuteKnobs,
    nm_permute,
    nm_permute_applies,
    nm_permute_weights,
)
from tvm_sparse.measure.random_masks import nm_mask

AVX2 = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
AVX512 = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})
HOST = tvm.target.Target({"kind": "llvm", "mcpu": llvm_get_system_cpu()})


def _runs_here(target: tvm.target.Target) -> bool:
    wanted = "avx512f" if target is AVX512 else "avx2"
    return target_has_features(wanted, HOST)


def _check(target, m, k, n, nm, epilogue=PLAIN, **knobs):
    if not _runs_here(target):
        pytest.skip(f"this host does not run {target.attrs['mcpu']} code")
    rng = np.random.default_rng(1)
    weight = (rng.standard_normal((n, k)) * nm_mask(n, k, nm, rng)).astype("float32")
    x = rng.standard_normal((m, k)).astype("float32")
    bias = rng.standard_normal(n).astype("float32")
    knobs = NMPermuteKnobs.for_target(target, **knobs)
    values, slots = nm_permute_weights(to_nm(weight, nm, row_multiple=knobs.block), knobs)
    func = nm_permute(m, k, n, nm, knobs=knobs, epilogue=epilogue)
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target)
    args = [x, values, slots, *([bias] if epilogue.bias else []), np.zeros((m, n), "float32")]
    tensors = [tvm.runtime.tensor(a, tvm.cpu()) for a in args]
    lib["main"](*tensors)
    with_bias = torch.from_numpy(bias) if epilogue.bias else None
    expected = torch.nn.functional.linear(torch.from_numpy(x), torch.from_numpy(weight), with_bias)
    if epilogue.activation:
        expected = torch.relu(expected)
    np.testing.assert_allclose(tensors[-1].numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("target", [AVX2, AVX512], ids=["avx2", "avx512"])
@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (4, 8), (1, 2), (3, 8)])
@pytest.mark.parametrize(("m", "k", "n"), [(37, 64, 80), (1, 32, 16), (8, 128, 64)])
def test_matches_pytorch(target, nm, m, k, n):
    _check(target, m, k, n, nm)


@pytest.mark.parametrize("target", [AVX2, AVX512], ids=["avx2", "avx512"])
def test_bias_and_activation_are_applied_in_the_stores(target):
    _check(target, 19, 64, 40, (2, 4), Epilogue(bias=True, activation="relax.nn.relu"))


def test_sixteen_wide_groups_and_rows_split_among_tasks():
    _check(AVX512, 50, 64, 16, (5, 16), rows=4, cores=4)


def test_where_it_applies():
    assert nm_permute_applies(AVX512, (2, 4), 64) and nm_permute_applies(AVX2, (4, 8), 64)
    assert not nm_permute_applies(AVX2, (2, 4), 66), "k not in whole groups"
    assert not nm_permute_applies(AVX2, (8, 16), 64), "a group wider than an AVX2 register"
    assert not nm_permute_applies(AVX512, (2, 3), 63), "no permute for groups of 3"
    neon = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
    assert not nm_permute_applies(neon, (2, 4), 64)
    with pytest.raises(ValueError, match="no permute"):
        nm_permute(4, 63, 16, (2, 3), knobs=NMPermuteKnobs.for_target(AVX512))
