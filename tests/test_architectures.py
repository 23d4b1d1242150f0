"""Popular architectures (random weights) compile and match PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tvm_sparse
from benchmarks.architectures import BertLayer, MobileNetV2, ResNet18, ViT, randomize_batch_norm

CASES = {
    "resnet18": (lambda: randomize_batch_norm(ResNet18(num_classes=10)), (1, 3, 64, 64)),
    "mobilenetv2": (lambda: randomize_batch_norm(MobileNetV2(num_classes=10)), (1, 3, 64, 64)),
    "bert-base-layer": (lambda: BertLayer(), (1, 32, 768)),
    "vit": (lambda: ViT(image=32, patch=8, d_model=64, depth=2, heads=4, num_classes=10),
            (2, 3, 32, 32)),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_architecture_matches_pytorch(name):
    factory, shape = CASES[name]
    torch.manual_seed(0)
    model, x = factory().eval(), torch.randn(*shape)
    compiled = tvm_sparse.compile(model, "x86", example_inputs=(x,), sparsity="off")
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(compiled(x.numpy()), expected, rtol=1e-4, atol=1e-4)
    assert not [n for n in compiled.report.notes if "no schedule rule" in n]
