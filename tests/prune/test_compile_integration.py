"""The front end's output as the compiler sees it: detected patterns, and compiled numerics."""

import numpy as np
import pytest
import torch
import zoo
from torch import nn

from tvm_sparse.prune import prune

analyze_weight = pytest.importorskip("tvm_sparse.passes.detect_sparsity").analyze_weight


def _matrices(model):
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            yield name, m.weight.detach().reshape(m.weight.shape[0], -1).numpy()


@pytest.mark.parametrize(
    ("pattern", "options", "check"),
    [
        ("2:4", {}, lambda s: s.nm == (2, 4)),
        ("4:8", {}, lambda s: s.nm in ((2, 4), (4, 8))),
        ("block", {"block_shape": (16, 1)}, lambda s: s.block_shape[0] >= 16),
        ("block", {"block_shape": (4, 4)}, lambda s: s.block_shape in ((4, 4), (16, 16))),
    ],
)
def test_compiler_detects_the_pattern(pattern, options, check):
    model, x = zoo.make("mlp")
    result = prune(model, x, pattern=pattern, sparsity=None if ":" in pattern else 0.5, **options)
    for name, matrix in _matrices(model):
        if f"{name}.weight" in result.skipped:
            continue
        found = analyze_weight(matrix)
        assert check(found), (name, found)


def test_compiler_detects_the_removed_channels():
    model, x = zoo.make("cnn")
    result = prune(model, x, pattern="channel", sparsity=0.5)
    found = {name: analyze_weight(matrix) for name, matrix in _matrices(model)}
    for root, dead in result.pruned_channels.items():
        assert set(dead) <= set(found[root].zero_out_channels)
    # Consumers' columns that read a pruned channel are zero, too.
    dead = result.pruned_channels["layer1.conv1"]
    cols = {c * 9 + k for c in dead for k in range(9)}
    assert cols <= set(found["layer1.conv2"].zero_in_channels)


def _compile_or_skip():
    import tvm_sparse

    compile_fn = getattr(tvm_sparse, "compile", None)
    if compile_fn is None:
        pytest.skip("tvm_sparse.compile is not available")
    return compile_fn


@pytest.mark.parametrize(
    ("name", "pattern"),
    [("mlp", "channel"), ("cnn", "channel"), ("mlp", "block"), ("mlp", "2:4")],
)
def test_compiled_pruned_model_matches_pytorch(name, pattern):
    compile_fn = _compile_or_skip()
    model, x = zoo.make(name)
    options = {"block_shape": (16, 1)} if pattern == "block" else {}
    prune(model, x, pattern=pattern, sparsity=None if ":" in pattern else 0.5, **options)
    compiled = compile_fn(model, "x86", example_inputs=x)
    out = compiled(*x)
    out = out[0] if isinstance(out, (list, tuple)) else out
    with torch.no_grad():
        expected = model(*x).numpy()
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=1e-4)
    rows = compiled.report.rows
    # The report shows the channels removed or the sparse kernels chosen; 2:4 has no x86 kernel,
    # so there the report must at least name the pattern it found and why it stayed dense.
    evidence = [r for r in rows if r.pattern != "dense" or (pattern in r.reason)]
    assert evidence, compiled.report.table()
