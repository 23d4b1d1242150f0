"""What follows a matmul in a model and fuses into a dense matmul's loop: the bias add and the
activation after it. The layer timer times a matmul's candidates with them, since a sparse
kernel, which fusion cannot enter, runs them as a pass of their own."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tvm
from tvm import relax

from ._bindings import op_name

#: Activations timed after a matmul's bias (the ones a dense matmul fuses).
ACTIVATIONS = frozenset(
    {"relax.nn.relu", "relax.nn.gelu", "relax.nn.gelu_tanh", "relax.nn.silu", "relax.sigmoid"}
)


def matmul_epilogue(
    var: relax.Var,
    outputs: int,
    users: Mapping[relax.Var, relax.Var],
    values: Mapping[relax.Var, relax.Expr],
) -> tuple[str, ...]:
    """``("bias", activation)``, ``("bias",)`` or ``()`` for the matmul bound to ``var`` with
    ``outputs`` columns: its only user adds a constant of one value per output, and the
    activation is that add's only user (reshapes between skipped). ``users`` maps a var to its
    only user (:func:`~tvm_sparse.passes._bindings.only_users`)."""
    var = users.get(var)
    if var is None or op_name(values[var]) != "relax.add":
        return ()
    if not any(_is_bias(a, outputs) for a in values[var].args):
        return ()
    while (var := users.get(var)) is not None:
        name = op_name(values[var])
        if name != "relax.reshape":
            return ("bias", name) if name in ACTIVATIONS else ("bias",)
    return ("bias",)


def _is_bias(arg: relax.Expr, outputs: int) -> bool:
    if not isinstance(arg, tvm.ir.Constant):
        return False
    shape = arg.value.shape
    return bool(shape) and shape[-1] == outputs and int(np.prod(shape)) == outputs
