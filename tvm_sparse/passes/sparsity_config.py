"""The ``sparsity=`` option of :class:`~tvm_sparse.passes.RewriteToSparse`, parsed and validated.

``"auto"``
    Per layer, the fastest of the detected block shape, 1x1 (unstructured) and N:M, if the
    evidence puts it at least ``min_speedup`` (1.1) times faster than dense.
``"off"``
    Everything stays dense (decisions still recorded).
``dict``
    ``{binding_name: choice, ..., "*": default_choice}``; choices are ``"auto"``, ``"dense"``,
    ``"bsr"`` (detected block), ``"bsr:RxC"`` (a given block), ``"unstructured"`` (1x1 BSR),
    ``"nm"`` (detected N:M), ``"nm:N:M"`` and ``"nm:N:M:VARIANT"`` (one N:M kernel of the
    target's: ``permute`` or ``gather`` on x86, where ``"nm:N:M"`` times both per layer and
    takes the faster). A named choice is honoured even where the model
    says it is slower (the reason says so). Unknown choices and names that are not candidates
    raise ``ValueError`` listing the valid ones. A :class:`SparsityConfig` is accepted too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CHOICES", "NM_VARIANTS", "LayerChoice", "SparsityConfig"]

CHOICES = ("auto", "dense", "bsr", "bsr:RxC", "unstructured", "nm", "nm:N:M", "nm:N:M:VARIANT")
#: The N:M kernels a choice can name (:mod:`tvm_sparse.kernels.nm_permute` and
#: :mod:`tvm_sparse.kernels.nm_matmul`).
NM_VARIANTS = ("permute", "gather")


@dataclass(frozen=True)
class LayerChoice:
    """What to do with one layer: ``kind`` in auto/dense/bsr/nm, optionally a fixed shape and,
    for N:M, the kernel (``variant``, one of :data:`NM_VARIANTS`)."""

    kind: str = "auto"
    block: tuple[int, int] | None = None
    nm: tuple[int, int] | None = None
    variant: str | None = None

    @classmethod
    def parse(cls, value: str | LayerChoice, *, key: str = "sparsity") -> LayerChoice:
        if isinstance(value, LayerChoice):
            return value
        text = str(value).strip().lower()
        try:
            if text in ("auto", "dense", "bsr", "nm"):
                return cls(kind=text)
            if text in ("unstructured", "csr"):
                return cls(kind="bsr", block=(1, 1))
            if text.startswith("bsr:"):
                r, c = text[4:].split("x")
                block = (int(r), int(c))
                if min(block) < 1:
                    raise ValueError
                return cls(kind="bsr", block=block)
            if text.startswith("nm:"):
                n, m, *variant = text[3:].split(":")
                pair = (int(n), int(m))
                if not 0 < pair[0] <= pair[1] or len(variant) > 1:
                    raise ValueError
                if variant and variant[0] not in NM_VARIANTS:
                    raise ValueError
                return cls(kind="nm", nm=pair, variant=variant[0] if variant else None)
        except ValueError:
            pass
        raise ValueError(
            f"{key}: unknown sparsity choice {value!r}; choose one of {', '.join(CHOICES)} "
            f"(VARIANT: {' or '.join(NM_VARIANTS)})"
        )


@dataclass(frozen=True)
class SparsityConfig:
    """Validated per-layer sparsity configuration of :class:`RewriteToSparse`.

    Parameters
    ----------
    default : LayerChoice
        Choice for layers not named in ``layers``.
    layers : Mapping[str, LayerChoice]
        Binding name (as in ``"tvm_sparse.weights"``) -> choice.
    min_speedup : float
        ``"auto"`` goes sparse only when the model estimates at least this speedup.
    """

    default: LayerChoice = field(default_factory=LayerChoice)
    layers: Mapping[str, LayerChoice] = field(default_factory=dict)
    min_speedup: float = 1.1

    @classmethod
    def from_arg(cls, sparsity: Any) -> SparsityConfig:
        """Build from ``"auto"``, ``"off"``, a ``{name: choice}`` dict or a config."""
        if isinstance(sparsity, SparsityConfig):
            return sparsity
        if sparsity is None or sparsity == "auto":
            return cls()
        if sparsity == "off":
            return cls(default=LayerChoice("dense"))
        if isinstance(sparsity, str):
            return cls(default=LayerChoice.parse(sparsity))
        if isinstance(sparsity, Mapping):
            layers = {}
            default = LayerChoice()
            for key, value in sparsity.items():
                if not isinstance(key, str):
                    raise ValueError(f"sparsity: layer names must be strings, got {key!r}")
                choice = LayerChoice.parse(value, key=f"sparsity[{key!r}]")
                if key == "*":
                    default = choice
                else:
                    layers[key] = choice
            return cls(default=default, layers=layers)
        raise ValueError(
            f"sparsity must be 'auto', 'off', a dict of layer choices or a SparsityConfig, "
            f"got {sparsity!r}"
        )

    def choice_for(self, name: str) -> LayerChoice:
        return self.layers.get(name, self.default)
