"""Stable, unique names for the bindings of a Relax function.

Passes in this package key their function attributes (``"tvm_sparse.weights"``,
``"tvm_sparse.decisions"``) by binding name, so every pass must derive the same names from the
same function. Frontends do repeat ``name_hint``\\ s (the torch importer emits two ``lv5`` when
it decomposes batch norm), so names are disambiguated deterministically, the way the TVMScript
printer does it: parameters claim their names first, then bindings in program order; a name that
is taken gets the smallest suffix ``_1``, ``_2``, ... that is still free.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprVisitor, visitor


@visitor
class _BindingCollector(PyExprVisitor):
    """Collects every bound var and its value, in program order."""

    def __init__(self) -> None:
        self.bindings: list[tuple[relax.Var, relax.Expr]] = []

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        self.bindings.append((binding.var, binding.value))
        self.visit_expr(binding.value)

    def visit_match_cast_(self, binding: relax.MatchCast) -> None:
        self.bindings.append((binding.var, binding.value))
        self.visit_expr(binding.value)


def function_bindings(func: relax.Function) -> list[tuple[relax.Var, relax.Expr]]:
    """All ``(var, value)`` bindings of ``func`` in program order (nested scopes included)."""
    collector = _BindingCollector()
    collector.visit_expr(func.body)
    return collector.bindings


def unique_binding_names(func: relax.Function) -> dict[relax.Var, str]:
    """Map each bound var of ``func`` to a name unique within the function.

    Parameters
    ----------
    func : relax.Function
        The function whose bindings are named.

    Returns
    -------
    names : dict[relax.Var, str]
        The var's own name where it is unique, otherwise ``name_k`` with the smallest free ``k``.
    """
    taken = {param.name for param in func.params}
    names: dict[relax.Var, str] = {}
    for var, _ in function_bindings(func):
        name = var.name
        if name in taken:
            k = 1
            while f"{name}_{k}" in taken:
                k += 1
            name = f"{name}_{k}"
        taken.add(name)
        names[var] = name
    return names


def op_name(value: relax.Expr | None) -> str:
    """The name of the Relax op ``value`` calls (``"relax.matmul"``), or ``""``."""
    is_op = isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)
    return value.op.name if is_op else ""


def only_users(func: relax.Function) -> dict[relax.Var, relax.Var]:
    """Each bound var of ``func``'s dataflow blocks that exactly one binding reads and nothing
    else (not the block's outputs, not the function's result), mapped to that binding's var;
    from TVM's use-def chains (``relax.analysis.udchain``)."""
    users: dict[relax.Var, relax.Var] = {}
    for block in func.body.blocks:
        if not isinstance(block, relax.DataflowBlock):
            continue
        for var, uses in relax.analysis.udchain(block).items():
            if len(uses) == 1 and uses[0] is not None and isinstance(var, relax.DataflowVar):
                users[var] = uses[0]
    return users


def with_functions(mod: tvm.IRModule, updates: dict[relax.GlobalVar, Any]) -> tvm.IRModule:
    """``mod`` with the functions in ``updates`` replaced (``mod`` itself when there are none)."""
    if not updates:
        return mod
    mod = mod.clone()
    for gv, func in updates.items():
        mod.update_func(gv, func)
    return mod
