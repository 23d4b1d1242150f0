"""Reference architectures with random weights, for the benchmarks and the tests.

ResNet-18, MobileNetV2, a BERT-base encoder layer and a BERT-mini encoder, a ViT, a ConvNeXt and
the BERT feed-forward block, following the published layer shapes (torchvision cannot be
installed beside the CPU build of torch this project pins, and no weights can be downloaded).
The ones the built-in example runs live in the package, ``tvm_sparse._example_models``.
"""

from __future__ import annotations

import torch
from torch import nn

from tvm_sparse._example_models import BasicBlock, BertFFN, ResNet18, randomize_batch_norm

__all__ = [
    "BasicBlock",
    "BertEncoder",
    "BertFFN",
    "BertLayer",
    "ConvNeXt",
    "InvertedResidual",
    "MobileNetV2",
    "ResNet18",
    "ViT",
    "randomize_batch_norm",
]


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion, 3x3 depthwise (strided), 1x1 linear projection."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018), as in torchvision; ``width`` is its width multiplier
    (channels rounded to multiples of 8, at least 8; the 1280 of the last conv is kept at
    widths below 1, as torchvision does)."""

    # (expansion, channels, repeats, stride)
    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1)]  # fmt: skip

    def __init__(self, num_classes: int = 1000, width: float = 1.0, last: int = 1280):
        super().__init__()
        stem = _divisible(32 * width)
        layers: list[nn.Module] = [
            nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU6()
        ]  # fmt: skip
        c_in = stem
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                c_out = _divisible(c * width)
                layers.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t))
                c_in = c_out
        last = _divisible(last * max(width, 1.0))
        layers += [nn.Conv2d(c_in, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def _divisible(channels: float, multiple: int = 8) -> int:
    """torchvision's ``_make_divisible``: the nearest multiple, at least 90% of ``channels``."""
    rounded = max(multiple, int(channels + multiple / 2) // multiple * multiple)
    return rounded + multiple if rounded < 0.9 * channels else rounded


class BertLayer(nn.Module):
    """A BERT encoder layer (post-LayerNorm): self-attention and a GELU feed-forward block."""

    def __init__(self, d_model: int = 768, heads: int = 12, d_ff: int = 3072):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.attn_out = nn.Linear(d_model, d_model)
        self.ln1 = nn.LayerNorm(d_model, eps=1e-12)
        self.ffn = BertFFN(d_model, d_ff)
        self.ln2 = nn.LayerNorm(d_model, eps=1e-12)

    def forward(self, x):
        b, s, d = x.shape
        h = self.heads

        def split(t):
            return t.reshape(b, s, h, d // h).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        att = torch.softmax(q @ k.transpose(-2, -1) * (d // h) ** -0.5, dim=-1)
        ctx = (att @ v).transpose(1, 2).reshape(b, s, d)
        x = self.ln1(x + self.attn_out(ctx))
        return self.ln2(x + self.ffn(x))


class ViT(nn.Module):
    """A Vision Transformer (Dosovitskiy et al. 2021): patch embedding, class token, encoders."""

    def __init__(
        self,
        image: int = 224,
        patch: int = 16,
        d_model: int = 192,
        depth: int = 12,
        heads: int = 3,
        num_classes: int = 1000,
    ):
        super().__init__()
        self.embed = nn.Conv2d(3, d_model, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, d_model) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, d_model) * 0.02)
        self.layers = nn.Sequential(*[BertLayer(d_model, heads, 4 * d_model) for _ in range(depth)])
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.head(self.norm(self.layers(x))[:, 0])


class BertEncoder(nn.Module):
    """BERT encoder layers over token embeddings (BERT-mini: 4 layers of 256, 4 heads)."""

    def __init__(self, d_model: int = 256, heads: int = 4, d_ff: int = 1024, depth: int = 4):
        super().__init__()
        self.layers = nn.Sequential(*[BertLayer(d_model, heads, d_ff) for _ in range(depth)])

    def forward(self, x):
        return self.layers(x)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor, written as ConvNeXt's code writes it."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """7x7 depthwise conv, LayerNorm and an MLP on channels-last pixels, layer scale, residual."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x):
        y = self.conv_dw(x).permute(0, 2, 3, 1)
        y = self.fc2(self.act(self.fc1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """ConvNeXt (Liu et al. 2022); the defaults are the atto size (2-2-6-2 blocks, 40-320 wide)."""

    def __init__(self, dims=(40, 80, 160, 320), depths=(2, 2, 6, 2), num_classes: int = 1000):
        super().__init__()
        stages: list[nn.Module] = [nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6)]
        for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
            if i:
                stages += [LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dim, 2, 2)]
            stages += [ConvNeXtBlock(dim) for _ in range(depth)]
        self.features = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        x = self.features(x).mean((2, 3))
        return self.head(self.norm(x))
