"""PadAttentionTokens: attention over a token count that fills whole SIMD registers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from ._bindings import only_users, op_name, with_functions
from .collect_report import DECISIONS_ATTR

__all__ = ["PadAttentionTokens"]

#: Ops between the score matmul and the softmax, or the softmax and the value matmul, that
#: keep the key axis last: they are emitted again over the padded axis.
_RESHAPES = ("relax.reshape", "relax.broadcast_to")
_SCALES = ("relax.multiply", "relax.divide", "relax.add", "relax.subtract")

#: What a padded score becomes before the softmax: its exponential is zero (or, with
#: ``UseFastMath``'s clamped exponential, far below the rounding error of the row's sum).
_MASKED = -1e30


def _shape(expr: relax.Expr) -> tuple[int, ...] | None:
    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    if not isinstance(ty.shape, relax.ShapeExpr):
        return None
    if not all(isinstance(d, tirx.IntImm) for d in ty.shape.values):
        return None
    return tuple(int(d) for d in ty.shape.values)


@dataclass
class _Attention:
    """One ``softmax(scale(Q @ K^T)) @ V`` whose key axis is padded from ``tokens`` to
    ``padded``: the bindings from the score matmul to the value matmul, in order."""

    scores: relax.Var  # the score matmul Q @ K^T
    softmax: relax.Var
    values: relax.Var  # the value matmul P @ V
    chain: list[relax.Var]  # every binding to re-emit
    tokens: int
    padded: int


@mutator
class _Padder(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, attentions: list[_Attention]):
        super().__init__(mod)
        self.by_var = {var: a for a in attentions for var in a.chain}

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        attention = self.by_var.get(binding.var)
        if attention is None:
            super().visit_var_binding_(binding)
            return
        value = binding.value
        op = op_name(value)
        args = [self.visit_expr(a) for a in value.args]
        extra = attention.padded - attention.tokens
        ndim = len(_shape(value.args[1])) if op == "relax.matmul" else 0
        if binding.var.same_as(attention.scores):
            keys = relax.op.nn.pad(args[1], [0, 0] * (ndim - 1) + [0, extra])
            keys = self.builder_.emit(keys, name_hint="keys_padded")
            new = relax.op.matmul(args[0], keys, out_dtype=value.attrs.out_dtype)
        elif binding.var.same_as(attention.values):
            pad = [0, 0] * (ndim - 2) + [0, extra, 0, 0]
            vals = self.builder_.emit(relax.op.nn.pad(args[1], pad), name_hint="values_padded")
            new = relax.op.matmul(args[0], vals, out_dtype=value.attrs.out_dtype)
        elif binding.var.same_as(attention.softmax):
            mask = np.zeros(attention.padded, "float32")
            mask[attention.tokens :] = _MASKED
            masked = self.builder_.emit(
                relax.op.add(args[0], relax.const(mask)), name_hint="scores_masked"
            )
            new = relax.op.nn.softmax(masked, axis=-1)
        elif op in _RESHAPES:
            shape = [*_shape(binding.var)[:-1], attention.padded]
            new = (relax.op.reshape if op == "relax.reshape" else relax.op.broadcast_to)(
                args[0], shape
            )
        else:  # a scale or a bias constant along the key axis
            new = relax.Call(value.op, args, value.attrs)
        new = self.builder_.normalize(new)
        var_cls = relax.DataflowVar if isinstance(binding.var, relax.DataflowVar) else relax.Var
        var = var_cls(binding.var.name, new.ty)
        self.builder_.emit_normalized(relax.VarBinding(var, new))
        self.set_var_remap(binding.var, var)


def _find(func: relax.Function, lanes: int) -> list[_Attention]:
    """Attention blocks of ``func`` whose key axis a pad to whole registers serves."""
    values = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    users = only_users(func)
    only_use = users.get

    found = []
    for var, value in values.items():
        shape = _shape(var)
        if op_name(value) != "relax.nn.softmax" or shape is None or shape[-1] % lanes == 0:
            continue
        if int(value.attrs.axis) not in (-1, len(shape) - 1):
            continue
        tokens = shape[-1]
        padded = -(-tokens // lanes) * lanes
        if padded < 2 * lanes or (padded - tokens) * 8 > tokens:
            continue  # too short a row to vectorise, or more padding than it saves
        before = _back_to_scores(values, value.args[0], tokens, only_use)
        after = _on_to_values(values, var, tokens, only_use)
        if before is None or after is None:
            continue
        found.append(_Attention(before[0], var, after[-1], [*before, var, *after], tokens, padded))
    return found


def _keeps_key_axis(values, var, tokens) -> bool:
    """Whether ``var``'s binding maps its input's last axis (``tokens`` long) to its own."""
    value = values[var]
    op, shape = op_name(value), _shape(var)
    if shape is None or shape[-1] != tokens:
        return False
    if op in _RESHAPES:
        source = _shape(value.args[0])
        return source is not None and source[-1] == tokens
    if op in _SCALES:
        other = _shape(value.args[1])
        constant = isinstance(value.args[1], tvm.ir.Constant)
        return other is not None and (not other or other[-1] == 1) and constant
    return False


def _back_to_scores(values, var, tokens, only_use) -> list[relax.Var] | None:
    chain = []
    while isinstance(var, relax.Var) and var in values:
        if op_name(values[var]) == "relax.matmul":
            keys = _shape(values[var].args[1])
            if keys is None or keys[-1] != tokens:
                return None
            single = all(only_use(v) is not None for v in [var, *chain])
            return [var, *reversed(chain)] if single else None
        if not _keeps_key_axis(values, var, tokens):
            return None
        chain.append(var)
        var = values[var].args[0]
    return None


def _on_to_values(values, var, tokens, only_use) -> list[relax.Var] | None:
    chain = []
    while True:
        user = only_use(var)
        if user is None:
            return None
        value = values[user]
        if op_name(value) == "relax.matmul":
            vals = _shape(value.args[1])
            ok = value.args[0].same_as(var) and vals is not None and vals[-2] == tokens
            return [*chain, user] if ok else None
        if op_name(value) not in _RESHAPES or not _keeps_key_axis(values, user, tokens):
            return None
        chain.append(user)
        var = user


@tvm.transform.module_pass(opt_level=0, name="PadAttentionTokens")
class PadAttentionTokens:
    """Pad the key axis of attention to whole SIMD registers (ViT's 197 tokens to 208).

    A softmax over a row that is not a whole number of registers runs with scalar reductions
    and scalar exponentials; padded, its rows vectorise, and the score and value matmuls lose
    their ragged column and reduction tiles. The keys are padded with zero columns, the padded
    scores masked with a large negative constant before the softmax (their probabilities are
    zero), and the values padded with zero rows, so that the result is that of the model: only
    the key axis changes, the query axis and the output keep their shapes. Applies where the
    padding is at most an eighth of the row and every binding between the two matmuls has one
    use (a reshape, a broadcast, or a scale or bias constant along the key axis); an explicit
    attention mask varying along the keys is left as it is.

    Before::

        s = R.matmul(q, k_t)                    # (1, 3, 197, 197)
        s1 = R.multiply(s, R.const(0.125))
        p = R.nn.softmax(s1, axis=-1)
        o = R.matmul(p, v)                      # v: (1, 3, 197, 64)

    After::

        keys_padded = R.nn.pad(k_t, [0, 0, 0, 0, 0, 0, 0, 11])
        s = R.matmul(q, keys_padded)            # (1, 3, 197, 208)
        s1 = R.multiply(s, R.const(0.125))
        scores_masked = R.add(s1, mask)         # 0 for the tokens, -1e30 for the padding
        p = R.nn.softmax(scores_masked, axis=-1)
        values_padded = R.nn.pad(v, [0, 0, 0, 0, 0, 11, 0, 0])
        o = R.matmul(p, values_padded)          # (1, 3, 197, 64)

    Pipeline: after the sparsity passes (which follow heads through ``softmax(Q K^T) V``),
    before ``LegalizeOps``; llvm targets. The softmax's decision row says what was padded.

    Parameters
    ----------
    lanes : int
        The SIMD width in floats (the target's ``vector_lanes``).
    """

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, relax.Function) or (func.attrs and func.attrs.get("Primitive")):
                continue
            attentions = _find(func, self.lanes)
            if not attentions:
                continue
            new_func = _Padder(mod, attentions).visit_expr(func)
            earlier = (func.attrs or {}).get(DECISIONS_ATTR) or {}
            decisions = {str(k): v for k, v in earlier.items()}
            for a in attentions:
                decisions.setdefault(a.softmax.name, {"kernel": "", "pattern": "dense",
                    "reason": f"key axis padded from {a.tokens} to {a.padded} tokens (whole "
                    "SIMD registers), padded scores masked"})  # fmt: skip
            updates[gv] = new_func.with_attr(DECISIONS_ATTR, decisions)
        return with_functions(mod, updates)
