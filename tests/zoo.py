"""A model zoo defined in the tests: small models covering the op families the compiler meets.

Every entry is ``name -> (factory, example input shapes)``; weights are random (seeded), batch
norm statistics are randomised so inference-mode batch norm is not an identity.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.architectures import BasicBlock, randomize_batch_norm


class MLP(nn.Module):
    def __init__(self, d_in: int = 64, hidden: int = 128, d_out: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, d_out)

    def forward(self, x):
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class ResNetSmall(nn.Module):
    """A CNN with batch norm and residual blocks: a small ResNet."""

    def __init__(self, width: int = 16, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class DepthwiseSeparable(nn.Module):
    """A MobileNet-style block: pointwise expand, depthwise 3x3, pointwise project, residual."""

    def __init__(self, channels: int = 16, expand: int = 4):
        super().__init__()
        hidden = channels * expand
        self.expand = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()
        )
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
        )
        self.project = nn.Sequential(
            nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels)
        )
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        return self.pool(x + self.project(self.depthwise(self.expand(x))))


class EncoderLayer(nn.Module):
    """A transformer encoder layer: multi-head attention, LayerNorm and a GELU feed-forward."""

    def __init__(self, d_model: int = 64, heads: int = 4, d_ff: int = 128):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.o = nn.Linear(d_model, d_model)
        self.ln1 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, d_ff)
        self.ff2 = nn.Linear(d_ff, d_model)
        self.ln2 = nn.LayerNorm(d_model)

    def forward(self, x):
        b, s, d = x.shape
        h = self.heads

        def split(t):
            return t.reshape(b, s, h, d // h).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax(q @ k.transpose(-2, -1) / (d // h) ** 0.5, dim=-1)
        ctx = (att @ v).transpose(1, 2).reshape(b, s, d)
        x = self.ln1(x + self.o(ctx))
        return self.ln2(x + self.ff2(nn.functional.gelu(self.ff1(x))))


ZOO: dict[str, tuple[type[nn.Module], tuple[int, ...]]] = {
    "mlp": (MLP, (4, 64)),
    "cnn": (ResNetSmall, (2, 3, 16, 16)),
    "depthwise": (DepthwiseSeparable, (2, 16, 8, 8)),
    "transformer": (EncoderLayer, (2, 16, 64)),
}


def make(name: str, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Build a zoo model in eval mode with seeded random weights and an example input."""
    factory, shape = ZOO[name]
    torch.manual_seed(seed)
    model = randomize_batch_norm(factory(), seed).eval()
    generator = torch.Generator().manual_seed(seed)
    return model, (torch.randn(*shape, generator=generator),)
