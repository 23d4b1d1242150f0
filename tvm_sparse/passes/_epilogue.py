"""What follows a matmul in a model and fuses into a dense matmul's loop: the bias add and the
activation after it. The layer timer times a matmul's candidates with them, since a sparse
kernel, which fusion cannot enter, runs them as a pass of their own."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tvm
from tvm import relax

#: Activations timed after a matmul's bias (the ones a dense matmul fuses).
ACTIVATIONS = frozenset(
    {"relax.nn.relu", "relax.nn.gelu", "relax.nn.gelu_tanh", "relax.nn.silu", "relax.sigmoid"}
)

Users = dict[relax.Var, list[tuple[relax.Var, relax.Expr]]]


def users_of(values: Mapping[relax.Var, relax.Expr]) -> Users:
    """The bindings that read each var, in program order."""
    users: Users = {}
    for var, value in values.items():
        for arg in getattr(value, "args", []):
            if isinstance(arg, relax.Var):
                users.setdefault(arg, []).append((var, value))
    return users


def matmul_epilogue(users: Users, var: relax.Var, outputs: int) -> tuple[str, ...]:
    """``("bias", activation)``, ``("bias",)`` or ``()`` for the matmul bound to ``var`` with
    ``outputs`` columns: its only user adds a constant of one value per output, and the
    activation is that add's only user (reshapes between skipped)."""
    found = users.get(var, [])
    if len(found) != 1 or _op_name(found[0][1]) != "relax.add":
        return ()
    var, value = found[0]
    if not any(_is_bias(a, outputs) for a in value.args):
        return ()
    while len(users.get(var, [])) == 1:
        var, value = users[var][0]
        name = _op_name(value)
        if name != "relax.reshape":
            return ("bias", name) if name in ACTIVATIONS else ("bias",)
    return ("bias",)


def _op_name(value: relax.Expr) -> str:
    is_op = isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)
    return value.op.name if is_op else ""


def _is_bias(arg: relax.Expr, outputs: int) -> bool:
    if not isinstance(arg, tvm.ir.Constant):
        return False
    shape = arg.value.shape
    return bool(shape) and shape[-1] == outputs and int(np.prod(shape)) == outputs
