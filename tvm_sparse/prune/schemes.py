"""Sparsity schemes: which zeros a pruned weight may hold, as validated config dataclasses.

One registry, :data:`SPARSITY_SCHEMES`, maps each pattern name to its scheme class; the CLI uses
its keys as choices. Weight-level schemes (``unstructured``, ``n:m``, ``block``) turn a score per
weight into a mask; structured schemes (``channel``, ``head``) act on coupled groups found by the
dependency graph (:mod:`tvm_sparse.prune.dependency`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

__all__ = [
    "SPARSITY_SCHEMES",
    "BlockScheme",
    "ChannelScheme",
    "HeadScheme",
    "NMScheme",
    "SparsityScheme",
    "UnstructuredScheme",
    "make_scheme",
]


def check_sparsity(sparsity: Any, *, name: str = "sparsity") -> float:
    """Validate a sparsity level: a real number in ``[0, 1)``."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1), got {type(sparsity).__name__}")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {sparsity!r}")
    return float(sparsity)


def _check_options(cls: type[SparsityScheme], options: dict[str, Any]) -> None:
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(
            f"option {unknown[0]!r} does not apply to the {cls.name!r} pattern: "
            f"valid options are {fields or 'none'}"
        )


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class SparsityScheme:
    """Base of all schemes. Subclasses are frozen dataclasses validated on construction."""

    name: ClassVar[str] = ""
    #: Whether the scheme prunes coupled channel groups rather than single weights.
    structured: ClassVar[bool] = False

    def replace(self, **options: Any) -> SparsityScheme:
        """A copy with ``options`` changed, validated again.

        Raises
        ------
        ValueError
            If an option is not a field of this scheme; the message lists the fields.
        """
        _check_options(type(self), options)
        return dataclasses.replace(self, **options)

    def options(self) -> dict[str, Any]:
        """The scheme's fields as a plain dict (for saving)."""
        return dataclasses.asdict(self)

    def fixed_sparsity(self) -> float | None:
        """The sparsity the pattern implies by itself, if any (``n:m``)."""
        return None

    def unsupported_reason(self, weight: torch.Tensor) -> str | None:
        """Why this scheme cannot apply to ``weight`` (viewed as a matrix), or ``None``."""
        return None


@dataclass(frozen=True)
class UnstructuredScheme(SparsityScheme):
    """Any weight may be zero: the best accuracy, the hardest to turn into speed."""

    name: ClassVar[str] = "unstructured"

    def unit_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """One score per prunable unit (here a weight), flattened."""
        return scores.reshape(-1)

    def expand(self, unit_keep: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Broadcast a keep-mask per unit back to the weight's shape."""
        return unit_keep.reshape(shape)


@dataclass(frozen=True)
class NMScheme(SparsityScheme):
    """At most ``n`` nonzeros in every group of ``m`` consecutive weights along the input axis.

    For a convolution the input axis is the flattened ``in_channels * kh * kw`` one, the layout
    of the im2col matrix. 2:4 is what Ampere-class sparse tensor cores accelerate.

    Parameters
    ----------
    n : int
        Nonzeros kept per group.
    m : int
        Group size; the input axis must be a multiple of it.
    """

    name: ClassVar[str] = "n:m"
    n: int = 2
    m: int = 4

    def __post_init__(self) -> None:
        _positive_int(self.n, "n")
        _positive_int(self.m, "m")
        if self.n >= self.m:
            raise ValueError(
                f"N:M sparsity needs n < m, got n={self.n}, m={self.m} (for example 2:4 or 4:8)"
            )

    def fixed_sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def unsupported_reason(self, weight: torch.Tensor) -> str | None:
        cols = weight.reshape(weight.shape[0], -1).shape[1]
        if cols % self.m:
            return f"input axis of {cols} is not a multiple of m={self.m}"
        return None

    def mask(self, scores: torch.Tensor) -> torch.Tensor:
        """Keep the ``n`` highest scores in every group of ``m`` along the input axis."""
        shape = scores.shape
        groups = scores.reshape(shape[0], -1, self.m)
        keep = torch.zeros_like(groups, dtype=torch.bool)
        top = groups.topk(self.n, dim=-1).indices
        keep.scatter_(-1, top, True)
        return keep.reshape(shape)


@dataclass(frozen=True)
class BlockScheme(SparsityScheme):
    """Whole blocks of the ``(out, in)`` weight matrix are zero, aligned to the block grid.

    Parameters
    ----------
    block_shape : tuple[int, int]
        ``(rows, cols)``: output rows by input columns; ``(16, 1)`` suits x86 block-sparse
        kernels. Edge blocks of a matrix that is not a multiple are partial but still aligned.
    """

    name: ClassVar[str] = "block"
    block_shape: tuple[int, int] = (16, 1)

    def __post_init__(self) -> None:
        shape = self.block_shape
        if (
            not isinstance(shape, (tuple, list))
            or len(shape) != 2
            or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in shape)
        ):
            raise ValueError(
                f"block_shape must be two positive integers (rows, cols), got {shape!r}"
            )
        object.__setattr__(self, "block_shape", tuple(shape))

    def _grid(self, shape: torch.Size) -> tuple[int, int, int, int]:
        rows, cols = shape[0], math.prod(shape[1:])
        br, bc = self.block_shape
        return rows, cols, -(-rows // br), -(-cols // bc)

    def unit_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """Mean score per block (partial edge blocks are averaged over their real weights)."""
        rows, cols, nr, nc = self._grid(scores.shape)
        br, bc = self.block_shape
        padded = scores.new_zeros(nr * br, nc * bc)
        count = scores.new_zeros(nr * br, nc * bc)
        padded[:rows, :cols] = scores.reshape(rows, cols)
        count[:rows, :cols] = 1
        total = padded.reshape(nr, br, nc, bc).sum((1, 3))
        return (total / count.reshape(nr, br, nc, bc).sum((1, 3))).reshape(-1)

    def expand(self, unit_keep: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        rows, cols, nr, nc = self._grid(shape)
        br, bc = self.block_shape
        full = unit_keep.reshape(nr, nc).repeat_interleave(br, 0).repeat_interleave(bc, 1)
        return full[:rows, :cols].reshape(shape)


@dataclass(frozen=True)
class ChannelScheme(SparsityScheme):
    """Whole output channels (conv filters, linear neurons) are zero, with every layer coupled
    to them through residual adds, concatenation, depthwise convolutions and batch norm.

    Parameters
    ----------
    round_to : int
        The kept channels of each group are rounded up to a multiple of this, so the shrunk
        dense layers keep vector lanes full.
    """

    name: ClassVar[str] = "channel"
    structured: ClassVar[bool] = True
    round_to: int = 1

    def __post_init__(self) -> None:
        _positive_int(self.round_to, "round_to")


@dataclass(frozen=True)
class HeadScheme(SparsityScheme):
    """Whole attention heads are zero: their query, key and value rows and output columns."""

    name: ClassVar[str] = "head"
    structured: ClassVar[bool] = True


#: Pattern name -> scheme class. The CLI's ``--pattern`` choices are these keys.
SPARSITY_SCHEMES: dict[str, type[SparsityScheme]] = {
    cls.name: cls for cls in (UnstructuredScheme, NMScheme, BlockScheme, ChannelScheme, HeadScheme)
}


def make_scheme(pattern: str | SparsityScheme, **options: Any) -> SparsityScheme:
    """Build a scheme from a pattern name and its options.

    ``"2:4"``-style names are accepted as ``"n:m"`` with ``n`` and ``m`` set; ``n_m=(2, 4)`` is
    accepted as well. Options that are ``None`` are left at their defaults.

    Raises
    ------
    ValueError
        If the pattern is unknown (the message lists the valid ones) or an option is invalid.
    """
    options = {k: v for k, v in options.items() if v is not None}
    if isinstance(pattern, SparsityScheme):
        return pattern.replace(**options) if options else pattern
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a string, got {type(pattern).__name__}")
    name = pattern.strip().lower()
    if name not in SPARSITY_SCHEMES and ":" in name:
        n, _, m = name.partition(":")
        if n.isdigit() and m.isdigit():
            options.setdefault("n", int(n))
            options.setdefault("m", int(m))
            name = "n:m"
    if name not in SPARSITY_SCHEMES:
        raise ValueError(
            f"unknown pattern {pattern!r}: choose one of {', '.join(SPARSITY_SCHEMES)} "
            "(or an N:M like '2:4')"
        )
    if "n_m" in options:
        n_m = options.pop("n_m")
        if not isinstance(n_m, (tuple, list)) or len(n_m) != 2:
            raise ValueError(f"n_m must be a pair (n, m), got {n_m!r}")
        options.setdefault("n", n_m[0])
        options.setdefault("m", n_m[1])
    cls = SPARSITY_SCHEMES[name]
    _check_options(cls, options)
    return cls(**options)
