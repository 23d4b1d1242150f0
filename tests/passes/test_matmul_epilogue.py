"""A sparse matmul's bias add and activation run in the kernel's stores, not as Relax ops."""

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

import tvm_sparse
from tvm_sparse.kernels.epilogue import RELU6
from tvm_sparse.measure import block_mask, nm_mask
from tvm_sparse.passes._epilogue import FUSED_ACTIVATIONS
from tvm_sparse.passes.detect_sparsity import DetectSparsity
from tvm_sparse.passes.rewrite_to_sparse import DECISIONS_ATTR, RewriteToSparse
from tvm_sparse.targets import get_preset

TARGET = get_preset("x86").tvm_target()  # the host CPU: tests run the code they build

ACTIVATIONS = {
    "relax.nn.gelu": (relax.op.nn.gelu, torch.nn.functional.gelu),
    "relax.nn.gelu_tanh": (
        relax.op.nn.gelu_tanh,
        lambda t: torch.nn.functional.gelu(t, approximate="tanh"),
    ),
    "relax.nn.relu": (relax.op.nn.relu, torch.relu),
    "relax.nn.silu": (relax.op.nn.silu, torch.nn.functional.silu),
    "relax.sigmoid": (relax.op.sigmoid, torch.sigmoid),
    RELU6: (lambda y: relax.op.clip(y, 0, 6), lambda t: torch.clamp(t, 0, 6)),
}


def _rewrite(mod, sparsity):
    mod = DetectSparsity()(relax.transform.FoldConstant()(mod))
    return RewriteToSparse(TARGET, sparsity=sparsity)(mod)


def _run(mod, x):
    exe = tvm.compile(mod, TARGET, relax_pipeline=tvm_sparse.pipeline(TARGET, sparsity="off"))
    return relax.VirtualMachine(exe, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def _ops(mod) -> list[str]:
    found = []
    relax.analysis.post_order_visit(
        mod["main"].body,
        lambda e: found.append(e.op.name) if isinstance(e, relax.Call) and hasattr(e.op, "name")
        else None,
    )  # fmt: skip
    return found


def _ffn_up(weight, bias, x_shape, activation, reshape=False, bias_users=1):
    """``act(x @ W.T + b)`` as importers write it; ``reshape`` puts a reshape between the add
    and the activation, ``bias_users`` 2 gives the add a second reader."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(list(x_shape), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, relax.op.permute_dims(relax.const(weight))))
            y = bb.emit(relax.op.add(relax.const(bias), y))  # bias first, as some exporters do
            add = y
            if reshape:
                y = bb.emit(relax.op.reshape(y, (-1, weight.shape[0])))
            y = bb.emit(ACTIVATIONS[activation][0](y))
            if bias_users == 2:
                y = bb.emit(relax.op.add(y, relax.op.reshape(add, y.ty.shape)))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _reference(x, weight, bias, activation, bias_users=1):
    pre = torch.from_numpy(x) @ torch.from_numpy(weight).T + torch.from_numpy(bias)
    out = ACTIVATIONS[activation][1](pre)
    out = out.reshape(-1, weight.shape[0])
    return (out + pre.reshape(out.shape) if bias_users == 2 else out).numpy()


def _weight(rng, n, k, pattern):
    mask = nm_mask(n, k, (2, 4), rng) if pattern == "nm" else block_mask(n, k, (16, 1), 0.2, rng)
    return (rng.standard_normal((n, k)) * mask).astype("float32")


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize(
    "pattern, x_shape", [("bsr", (2, 12, 64)), ("unstructured", (24, 64)), ("nm", (1, 64))]
)
def test_bias_and_activation_are_applied_by_the_sparse_kernel(activation, pattern, x_shape):
    rng = np.random.default_rng(0)
    weight, bias = _weight(rng, 96, 64, pattern), rng.standard_normal(96).astype("float32")
    mod = _ffn_up(weight, bias, x_shape, activation, reshape=len(x_shape) == 3)
    after = _rewrite(mod, {"*": pattern})
    ops = _ops(after)
    assert "relax.call_tir" in ops and "relax.add" not in ops, ops
    (decision,) = [dict(v) for v in after["main"].attrs[DECISIONS_ATTR].values()]
    op = "relax.clip" if activation == RELU6 else activation
    if activation in FUSED_ACTIVATIONS:
        assert op not in ops, ops
        short = activation.removeprefix("relax.").removeprefix("nn.")
        assert decision["reason"].endswith(f"bias, {short} in its stores"), decision
    else:  # its fused form would call libm: it stays a Relax op, for UseFastMath
        assert op in ops, ops
        assert decision["reason"].endswith("; bias in its stores"), decision
    x = rng.standard_normal(x_shape).astype("float32")
    np.testing.assert_allclose(
        _run(after, x), _reference(x, weight, bias, activation), atol=1e-4, rtol=1e-4
    )


def test_an_add_with_another_reader_stays_a_relax_op():
    rng = np.random.default_rng(1)
    weight, bias = _weight(rng, 96, 64, "bsr"), rng.standard_normal(96).astype("float32")
    mod = _ffn_up(weight, bias, (24, 64), "relax.nn.relu", bias_users=2)
    after = _rewrite(mod, {"*": "bsr"})
    ops = _ops(after)
    assert "relax.call_tir" in ops and "relax.nn.relu" in ops and "relax.add" in ops, ops
    x = rng.standard_normal((24, 64)).astype("float32")
    np.testing.assert_allclose(
        _run(after, x),
        _reference(x, weight, bias, "relax.nn.relu", bias_users=2),
        atol=1e-4,
        rtol=1e-4,
    )


def test_a_bias_that_broadcasts_to_more_dims_stays_a_relax_op():
    rng = np.random.default_rng(2)
    weight = _weight(rng, 96, 64, "bsr")
    bias = rng.standard_normal((1, 1, 96)).astype("float32")  # (24, 96) + (1, 1, 96) is 3-D
    mod = _ffn_up(weight, bias, (24, 64), "relax.nn.relu")
    after = _rewrite(mod, {"*": "bsr"})
    assert "relax.add" in _ops(after)
    x = rng.standard_normal((24, 64)).astype("float32")
    ref = torch.relu(torch.from_numpy(x @ weight.T + bias)).numpy().reshape(-1, 96)
    np.testing.assert_allclose(_run(after, x).reshape(-1, 96), ref, atol=1e-4, rtol=1e-4)


def _conv(weight, bias, x_shape, activation, padding):
    """``act(conv2d(x, W) + b)`` in NCHW, the bias ``(1, C, 1, 1)`` as a folded batch norm's."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(list(x_shape), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(weight), padding=padding))
            y = bb.emit(relax.op.add(y, relax.const(bias.reshape(1, -1, 1, 1))))
            out = bb.emit_output(ACTIVATIONS[activation][0](y))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("activation", ["relax.nn.relu", RELU6])
@pytest.mark.parametrize("kernel, pattern", [(1, "bsr:16x1"), (3, "unstructured")])
def test_a_sparse_conv_applies_its_bias_and_activation(activation, kernel, pattern):
    rng = np.random.default_rng(3)
    mask = block_mask(64, 32 * kernel * kernel, (16, 1), 0.2, rng).reshape(64, 32, kernel, kernel)
    weight = (rng.standard_normal(mask.shape) * mask).astype("float32")
    bias = rng.standard_normal(64).astype("float32")
    after = _rewrite(_conv(weight, bias, (1, 32, 9, 9), activation, kernel // 2), {"*": pattern})
    ops = _ops(after)
    assert "relax.add" not in ops and "relax.clip" not in ops and "relax.nn.relu" not in ops, ops
    (decision,) = [dict(v) for v in after["main"].attrs[DECISIONS_ATTR].values()]
    short = activation.removeprefix("relax.").removeprefix("nn.")
    assert decision["reason"].endswith(f"bias, {short} in its stores"), decision
    x = rng.standard_normal((1, 32, 9, 9)).astype("float32")
    pre = torch.nn.functional.conv2d(
        torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias), padding=kernel // 2
    )
    expected = ACTIVATIONS[activation][1](pre).numpy()
    np.testing.assert_allclose(_run(after, x), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fast_math", [True, False])
def test_compiled_transformer_block_matches_pytorch(fast_math):
    # torch.export -> Relax, the way users bring a model: Linear(bias) + GELU + Linear(bias)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64)
    ).eval()
    with torch.no_grad():
        for layer in (model[0], model[2]):
            n, k = layer.weight.shape
            mask = block_mask(n, k, (16, 1), 0.2, np.random.default_rng(3))
            for j in np.flatnonzero(~mask.any(axis=0)):  # no input channel pruned whole
                mask[(j % (n // 16)) * 16 : (j % (n // 16) + 1) * 16, j] = True
            layer.weight.mul_(torch.from_numpy(mask.astype("float32")))
    x = torch.randn(2, 16, 64)
    compiled = tvm_sparse.compile(
        model, TARGET, example_inputs=(x,), sparsity={"*": "bsr"}, fast_math=fast_math
    )
    np.testing.assert_allclose(compiled(x.numpy()), model(x).detach().numpy(), atol=1e-4, rtol=1e-4)
    sparse = compiled.report.find(kernel="bsr_matmul[16x1]")
    assert len(sparse) == 2, compiled.report
    # with fast math the first kernel applies the GELU with UseFastMath's polynomial erf;
    # without, the GELU stays a Relax op with the C library's erf
    ends = sorted(row.reason.rsplit("; ", 1)[-1] for row in sparse)
    fused = "bias, gelu[fast] in its stores" if fast_math else "bias in its stores"
    assert ends == sorted(["bias in its stores", fused]), sparse
