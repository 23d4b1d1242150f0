"""What follows a matmul in a model: the bias add and the activation after it.

A dense matmul or conv gets both fused into its loop by ``FuseOps``. A sparse kernel is
opaque to fusion, so ``RewriteToSparse`` builds the bias, and a ReLU or ReLU6, into the
kernel's stores instead (:class:`tvm_sparse.kernels.epilogue.Epilogue`) and drops their Relax
ops; the layer timer times every candidate of a matmul with all of what follows it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import tvm
import tvm_ffi
from tvm import relax

from ..kernels.epilogue import ACTIVATIONS, FAST_GELU, RELU6, Epilogue
from ._bindings import op_name

__all__ = [
    "FUSED_ACTIVATIONS",
    "MatmulEpilogue",
    "activation_call",
    "fused_activation",
    "matmul_epilogue",
]

#: Activations a sparse kernel applies in its stores. The kernels can apply GELU, SiLU and
#: sigmoid too (:data:`~tvm_sparse.kernels.epilogue.ACTIVATIONS`), but their TIR forms call the
#: C library's erf, exp and tanh, which LLVM does not vectorise; left as Relax ops after the
#: kernel, ``UseFastMath`` gives them TOPI's vectorisable polynomials instead.
FUSED_ACTIVATIONS = frozenset({"relax.nn.relu", RELU6})
#: Activations fused in the form ``UseFastMath`` would give them, where the model computes
#: with fast math: GELU's erf as TOPI's polynomial, applied in the stores instead of in a pass
#: of its own over the whole output.
_FAST_FORMS = {"relax.nn.gelu": FAST_GELU}


def fused_activation(name: str | None, fast_math: bool) -> str | None:
    """What a sparse kernel applies in its stores for activation ``name`` (an ``ACTIVATIONS``
    key), or None where the activation stays a Relax op after the kernel."""
    if name in FUSED_ACTIVATIONS:
        return name
    return _FAST_FORMS.get(name) if fast_math else None


def activation_call(name: str, x: relax.Expr) -> relax.Expr:
    """The Relax call of activation ``name`` (a key of ``ACTIVATIONS``) on ``x``."""
    if name == RELU6:
        return relax.op.clip(x, 0, 6)
    return relax.Call(tvm.ir.Op.get(name), [x])


def _activation(value: relax.Expr) -> str | None:
    """The ``ACTIVATIONS`` key of ``value``'s op, or None."""
    name = op_name(value)
    if name == "relax.clip":
        bounds = [getattr(a, "value", None) for a in value.args[1:]]
        return RELU6 if bounds == [0, 6] else None
    return name if name in ACTIVATIONS else None


@dataclass(frozen=True)
class MatmulEpilogue:
    """The bias add and activation that only a matmul's output feeds.

    ``bias`` is the ``(n,)`` constant added (None when there is none; then there is no
    activation either), ``activation`` the Relax op that follows it (one of
    :data:`~tvm_sparse.kernels.epilogue.ACTIVATIONS`). ``absorbed`` maps the add's var, and the
    activation's where the kernel applies it (:attr:`kernel`), to the var whose value each takes
    then: the matmul's for the add, the activation's input (a reshape of the add, or the add).
    """

    bias: np.ndarray | None = None
    activation: str | None = None
    absorbed: Mapping[relax.Var, relax.Var] = field(default_factory=dict)
    fast_math: bool = False

    @property
    def ops(self) -> tuple[str, ...]:
        """``("bias", activation)``, ``("bias",)`` or ``()``: what the layer timer builds."""
        if self.bias is None:
            return ()
        return ("bias",) if self.activation is None else ("bias", self.activation)

    @property
    def kernel(self) -> Epilogue:
        """What the sparse kernel applies: the bias, and the activation where it is fused."""
        return Epilogue(self.bias is not None, fused_activation(self.activation, self.fast_math))


def matmul_epilogue(
    var: relax.Var,
    outputs: int,
    users: Mapping[relax.Var, relax.Var],
    values: Mapping[relax.Var, relax.Expr],
    channel_axis: int = -1,
    fast_math: bool = False,
) -> MatmulEpilogue:
    """The epilogue of the matmul (or NCHW conv, ``channel_axis=1``) bound to ``var`` with
    ``outputs`` channels: its only user adds a constant of one value per channel, keeping the
    shape, and the activation is that add's only user (reshapes between skipped). ``users``
    maps a var to its only user (:func:`~tvm_sparse.passes._bindings.only_users`); with
    ``fast_math`` the kernel also applies the activations :func:`fused_activation` names."""
    add = users.get(var)
    if add is None or op_name(values[add]) != "relax.add":
        return MatmulEpilogue()
    ndim = len(var.ty.shape) if getattr(var.ty, "shape", None) is not None else 0
    bias = next((a for a in values[add].args if _is_bias(a, outputs, ndim, channel_axis)), None)
    if bias is None or not _same_shape(add, var):
        return MatmulEpilogue()
    found = MatmulEpilogue(bias.value.numpy().reshape(outputs), None, {add: var})
    last = add
    while (user := users.get(last)) is not None:
        if op_name(values[user]) != "relax.reshape":
            name = _activation(values[user])
            if name is None:
                break
            fused = fused_activation(name, fast_math) is not None
            absorbed = {add: var, user: last} if fused else {add: var}
            return MatmulEpilogue(found.bias, name, absorbed, fast_math)
        last = user
    return found


def _is_bias(arg: relax.Expr, outputs: int, ndim: int, channel_axis: int) -> bool:
    """A constant that, broadcast to the output, holds one value per channel."""
    if not isinstance(arg, tvm.ir.Constant) or not hasattr(arg.value, "shape"):
        return False
    shape = tuple(arg.value.shape)
    if not shape or len(shape) > max(ndim, 1) or int(np.prod(shape)) != outputs:
        return False
    padded = (1,) * (max(ndim, 1) - len(shape)) + shape
    return padded[channel_axis] == outputs


def _same_shape(a: relax.Var, b: relax.Var) -> bool:
    return tvm_ffi.structural_equal(a.ty, b.ty)
