"""PadAttentionTokens: attention over ViT's 197 tokens runs on rows of whole registers and
gives the model's result; attention it cannot pad exactly is left as it is."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax

import tvm_sparse
from benchmarks.architectures import BertLayer
from tvm_sparse.frontend import import_model
from tvm_sparse.passes import PadAttentionTokens
from tvm_sparse.pipeline import prepare_passes
from tvm_sparse.targets.facts import vector_lanes


class MaskedAttention(nn.Module):
    """Attention with an additive mask that varies along the keys: not padded."""

    def __init__(self, d: int = 32, tokens: int = 37):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.register_buffer("mask", torch.randn(tokens))

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return torch.softmax(q @ k.transpose(-2, -1) + self.mask, dim=-1) @ v


class AttentionWithProbabilities(MaskedAttention):
    """Attention that also returns its probabilities: their shape is observable, not padded."""

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
        return att @ v, att


def _imported(model, x):
    mod = import_model(model, example_inputs=(x,)).mod
    return tvm.transform.Sequential(prepare_passes())(mod)


def _softmax_shapes(mod) -> list[tuple[int, ...]]:
    shapes = []

    def visit(e):
        if isinstance(e, relax.Call) and getattr(e.op, "name", "") == "relax.nn.softmax":
            shapes.append(tuple(int(d) for d in e.ty.shape))

    relax.analysis.post_order_visit(mod["main"], visit)
    return shapes


@pytest.mark.parametrize(("tokens", "lanes", "padded"), [(197, 16, 208), (197, 8, 200)])
def test_vit_attention_is_padded_and_exact(tokens, lanes, padded):
    torch.manual_seed(0)
    model, x = BertLayer(48, 3, 96).eval(), torch.randn(2, tokens, 48)
    after = PadAttentionTokens(lanes)(_imported(model, x))
    assert _softmax_shapes(after) == [(2, 3, tokens, padded)]
    reason = after["main"].attrs["tvm_sparse.decisions"]
    assert any(f"from {tokens} to {padded}" in str(v["reason"]) for v in reason.values())
    # the output keeps its shape; built with TVM's own pipeline, it is the model's result
    exe = tvm.compile(after, "llvm")
    vm = relax.VirtualMachine(exe, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x.numpy()))[0].numpy()
    with torch.no_grad():
        np.testing.assert_allclose(out, model(x).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("model", "tokens"),
    [
        (BertLayer(48, 3, 96), 128),  # whole registers already
        (BertLayer(48, 3, 96), 37),  # padding to 48 would add more than it saves
        (MaskedAttention(32, 197), 197),  # the mask varies along the keys
        (AttentionWithProbabilities(32, 197), 197),  # the probabilities are an output
    ],
)
def test_attention_that_is_not_padded(model, tokens):
    x = torch.randn(1, tokens, 32 if isinstance(model, MaskedAttention) else 48)
    before = _imported(model.eval(), x)
    after = PadAttentionTokens(16)(before)
    assert _softmax_shapes(after) == _softmax_shapes(before)


def test_compiled_vit_layer_matches_pytorch_and_reports_the_padding():
    torch.manual_seed(0)
    model, x = BertLayer(64, 4, 128).eval(), torch.randn(1, 197, 64)
    compiled = tvm_sparse.compile(model, "x86", example_inputs=(x,), verify_speed=False)
    with torch.no_grad():
        np.testing.assert_allclose(compiled(x.numpy()), model(x).numpy(), rtol=1e-4, atol=1e-5)
    padded = -(-197 // vector_lanes(compiled.target)) * vector_lanes(compiled.target)
    rows = [r for r in compiled.report.rows if r.op == "relax.nn.softmax"]
    assert len(rows) == 1 and f"padded from 197 to {padded}" in rows[0].reason
    assert rows[0].output_shape == [1, 4, 197, padded]
