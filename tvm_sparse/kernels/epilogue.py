"""The bias add and activation a sparse matmul kernel applies to its outputs as it stores them.

A dense matmul gets its bias and activation fused into its loop by ``FuseOps``; the sparse
kernels are opaque to fusion (``op_pattern`` 8), so without this they would run as a pass of
their own over the whole output, reading and writing it once more. Here they are computed on
the accumulators in registers, on the way to memory. The expressions are the ones Relax's
legalization produces for the same ops, so a fused layer computes what the unfused one did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tvm import tirx

__all__ = ["ACTIVATIONS", "EPILOGUE_ATTR", "FAST_GELU", "PLAIN", "RELU6", "Epilogue"]

#: The kernel attribute that records its epilogue (:attr:`Epilogue.attr`).
EPILOGUE_ATTR = "tvm_sparse.epilogue"


def _gelu(v):
    half = tirx.const(0.5, v.ty.dtype)
    return v * (half + tirx.erf(v * tirx.const(0.5**0.5, v.ty.dtype)) * half)


def _gelu_tanh(v):
    dtype = v.ty.dtype
    inner = (
        tirx.const(math.sqrt(2.0 / math.pi), dtype)
        * v
        * (tirx.const(1.0, dtype) + tirx.const(0.044715, dtype) * v * v)
    )
    return tirx.const(0.5, dtype) * v * (tirx.const(1.0, dtype) + tirx.tanh(inner))


#: The monomial coefficients of TOPI's ``fast_erf`` (``topi/elemwise.h``): odd numerator
#: and even denominator of a rational approximation on [-4, 4], beyond which fp32 erf is +-1.
_ERF_NUMERATOR = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
                  -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
                  -1.60960333262415e-02)  # fmt: skip
_ERF_DENOMINATOR = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
                    -7.37332916720468e-03, -1.42647390514189e-02)  # fmt: skip


def _fast_erf(v):
    """erf as ``UseFastMath`` computes it (TOPI's ``fast_erf``): multiplies, adds and one
    division, which vectorise, where the C library's ``erff`` is a call per element."""
    dtype = v.ty.dtype
    x = tirx.max(tirx.min(v, tirx.const(4.0, dtype)), tirx.const(-4.0, dtype))
    x2 = x * x
    p = tirx.const(_ERF_NUMERATOR[0], dtype)
    for c in _ERF_NUMERATOR[1:]:
        p = p * x2 + tirx.const(c, dtype)
    q = tirx.const(_ERF_DENOMINATOR[0], dtype)
    for c in _ERF_DENOMINATOR[1:]:
        q = q * x2 + tirx.const(c, dtype)
    return x * p / q


def _fast_gelu(v):
    half = tirx.const(0.5, v.ty.dtype)
    return v * (half + _fast_erf(v * tirx.const(0.5**0.5, v.ty.dtype)) * half)


#: ReLU6 as PyTorch exports it: ``relax.clip`` between 0 and 6 (Relax has no relu6 op).
RELU6 = "relax.clip[0..6]"
#: GELU with the fast erf of ``UseFastMath`` (about 1e-7 from the C library's).
FAST_GELU = "relax.nn.gelu[fast]"

#: Relax activation op -> its value at one output, as legalization computes it.
ACTIVATIONS = {
    RELU6: lambda v: tirx.max(tirx.min(v, tirx.const(6, v.ty.dtype)), tirx.const(0, v.ty.dtype)),
    "relax.nn.relu": lambda v: tirx.max(v, tirx.const(0, v.ty.dtype)),
    "relax.nn.gelu": _gelu,
    FAST_GELU: _fast_gelu,
    "relax.nn.gelu_tanh": _gelu_tanh,
    "relax.nn.silu": lambda v: v * tirx.sigmoid(v),
    "relax.sigmoid": tirx.sigmoid,
}


@dataclass(frozen=True)
class Epilogue:
    """What a kernel does to an output before storing it.

    Parameters
    ----------
    bias : bool
        Add ``bias[j]`` to output column ``j`` (the kernel then takes a ``(n,)`` bias buffer
        after its weight arrays).
    activation : str, optional
        A Relax op name from :data:`ACTIVATIONS`, applied after the bias.
    """

    bias: bool = False
    activation: str | None = None

    def __post_init__(self) -> None:
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation {self.activation!r} has no fused form; fused are {sorted(ACTIVATIONS)}"
            )

    def __bool__(self) -> bool:
        return self.bias or self.activation is not None

    def apply(self, value, bias, column):
        """``value`` as stored: plus ``bias[column]`` (``bias`` a buffer, or None when the
        epilogue has none), then the activation."""
        if self.bias:
            value = value + bias[column]
        if self.activation is not None:
            value = ACTIVATIONS[self.activation](value)
        return value

    @property
    def attr(self) -> str:
        """``"bias,relax.nn.gelu"``: the kernel's ``tvm_sparse.epilogue`` attribute, which the
        tuner reads back with :meth:`from_attr` to regenerate the kernel."""
        return ",".join((["bias"] if self.bias else []) + [self.activation or ""]).strip(",")

    @classmethod
    def from_attr(cls, text: str) -> Epilogue:
        parts = [p for p in str(text).split(",") if p]
        bias = "bias" in parts
        rest = [p for p in parts if p != "bias"]
        return cls(bias=bias, activation=rest[0] if rest else None)

    @property
    def label(self) -> str:
        """``"bias, gelu"``: what is applied, for reports."""
        parts = ["bias"] if self.bias else []
        if self.activation is not None:
            parts.append(self.activation.removeprefix("relax.").removeprefix("nn."))
        return ", ".join(parts)


#: Outputs stored as computed.
PLAIN = Epilogue()
