"""Passes that fill a :class:`~tvm_sparse.report.CompileReport` as the pipeline runs.

They never change the module. ``CollectOpReport`` goes before legalization and writes one row
per operator, taking pattern and reason from the ``"tvm_sparse.decisions"`` attribute of the
sparsity passes; ``CollectFusionGroups`` goes between ``FuseOps`` and ``FuseTIR`` and remembers
which operators share a kernel; ``CollectKernelReport`` goes after scheduling and names the
kernel that computes each row.
"""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import relax, tirx

from ..report import CompileReport, OpRecord
from ..schedules.apply_schedules import KERNEL_ATTR, UNSCHEDULED

__all__ = ["CollectFusionGroups", "CollectKernelReport", "CollectOpReport"]

DECISIONS_ATTR = "tvm_sparse.decisions"
WEIGHTS_ATTR = "tvm_sparse.weights"


def _dims(ty: relax.Type) -> list[int | str]:
    if isinstance(ty, relax.TensorType) and ty.shape is not None:
        return [int(d) if isinstance(d, tirx.IntImm) else str(d) for d in ty.shape.values]
    return []


def _numel(shape: list[int | str]) -> int:
    # A symbolic dimension counts as 1: the report gives FLOPs per unit of that dimension.
    return math.prod(d if isinstance(d, int) else 1 for d in shape)


def _op_flops(call: relax.Call, out_shape: list[int | str], name: str, attrs: dict) -> int:
    op_name = call.op.name if isinstance(call.op, tvm.ir.Op) else ""
    if op_name == "relax.matmul":
        k = _dims(call.args[0].ty)[-1]
        return 2 * _numel(out_shape) * (k if isinstance(k, int) else 1)
    if op_name in ("relax.nn.conv2d", "relax.nn.conv1d"):
        w_shape = _dims(call.args[1].ty)
        return 2 * _numel(out_shape) * _numel(w_shape[1:])
    if op_name == "relax.call_tir":
        return int(attrs.get("flops", 0))
    return _numel(out_shape) if op_name else 0


def _decisions(func: relax.Function) -> dict[str, dict]:
    attrs = func.attrs
    if attrs is None or DECISIONS_ATTR not in attrs:
        return {}
    return {str(k): {str(a): b for a, b in v.items()} for k, v in attrs[DECISIONS_ATTR].items()}


@tvm.transform.module_pass(opt_level=0, name="CollectOpReport")
class CollectOpReport:
    """Write one report row per operator binding of ``main``."""

    def __init__(self, report: CompileReport):
        self.report = report

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        func = mod["main"]
        decisions = _decisions(func)
        rows = []
        for block in func.body.blocks:
            for binding in block.bindings:
                call = binding.value
                if not isinstance(call, relax.Call):
                    continue
                if not isinstance(call.op, tvm.ir.Op):
                    continue
                op_name, args, kernel_attrs = call.op.name, list(call.args), {}
                if op_name == "relax.call_tir":
                    gvar = call.args[0]
                    prim = mod[gvar]
                    prim_attrs = prim.attrs or {}
                    op_name = str(prim_attrs.get("tvm_sparse.kernel", gvar.name_hint))
                    args = list(call.args[1].fields)
                    kernel_attrs = {"flops": int(prim_attrs.get("tvm_sparse.flops", 0))}
                name = binding.var.name
                out_shape = _dims(binding.var.ty)
                decision = decisions.get(name, {})
                rows.append(
                    OpRecord(
                        name=name,
                        op=op_name,
                        input_shapes=[_dims(a.ty) for a in args if _is_tensor(a)],
                        output_shape=out_shape,
                        flops=_op_flops(call, out_shape, name, kernel_attrs),
                        weight_bytes=sum(
                            _nbytes(a) for a in args if isinstance(a, tvm.ir.Constant)
                        ),
                        kernel=str(decision.get("kernel", "")),
                        pattern=str(decision.get("pattern", "dense")),
                        reason=str(decision.get("reason", "")),
                    )
                )
        self.report.rows = rows
        return mod


def _is_tensor(expr: relax.Expr) -> bool:
    return isinstance(expr.ty, relax.TensorType)


def _nbytes(const: tvm.ir.Constant) -> int:
    ty = const.ty
    if not isinstance(ty, relax.TensorType):
        return 0
    return _numel(_dims(ty)) * np.dtype(str(ty.dtype)).itemsize


@tvm.transform.module_pass(opt_level=0, name="CollectFusionGroups")
class CollectFusionGroups:
    """Remember, per fused function, the bindings it absorbed.

    ``FuseOps`` keeps the names of a group's inner bindings but renames its result (``gv``) and
    the bindings of ``main``; the result is matched later by operator and output shape.
    """

    def __init__(self, report: CompileReport):
        self.report = report
        self.groups: dict[str, list[str]] = {}

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        self.groups.clear()
        for gvar, func in mod.functions_items():
            if not isinstance(func, relax.Function) or not func.attrs:
                continue
            if not func.attrs.get("Primitive", False):
                continue
            output = func.body.body
            self.groups[gvar.name_hint] = [
                b.var.name
                for block in func.body.blocks
                for b in block.bindings
                if not b.var.same_as(output)
            ]
        return mod


@tvm.transform.module_pass(opt_level=0, name="CollectKernelReport")
class CollectKernelReport:
    """Name, in each report row, the scheduled kernel that computes it."""

    def __init__(self, report: CompileReport, fusion: CollectFusionGroups):
        self.report = report
        self.fusion = fusion

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        kernel_of: dict[str, tuple[str, str]] = {}
        by_result: list[tuple[str, list[int | str], str]] = []
        call_tir = tvm.ir.Op.get("relax.call_tir")
        for block in mod["main"].body.blocks:
            for binding in block.bindings:
                call = binding.value
                if not isinstance(call, relax.Call) or call.op != call_tir:
                    continue
                gvar = call.args[0]
                prim = mod[gvar]
                kernel = str(prim.attrs.get(KERNEL_ATTR, "")) if prim.attrs else ""
                name = gvar.name_hint
                if name in self.fusion.groups:
                    for member in self.fusion.groups[name]:
                        kernel_of[member] = (kernel, name)
                else:
                    kernel_of.setdefault(binding.var.name, (kernel, ""))
                by_result.append((name, _dims(binding.var.ty), kernel))
        unscheduled = []
        for row in self.report.rows:
            kernel, fused = kernel_of.get(row.name) or _match_result(row, by_result)
            if kernel and (not row.kernel or row.kernel == "dense"):
                row.kernel = kernel
            elif not row.kernel:
                row.kernel = "vm builtin" if row.flops == 0 else ""
            row.fused_into = fused if fused and fused != row.kernel else ""
            if kernel == UNSCHEDULED:
                unscheduled.append(row.name)
        if unscheduled:
            self.report.notes.append(
                f"no schedule rule claimed {', '.join(unscheduled)}: these run as plain loops"
            )
        return mod


def _match_result(row: OpRecord, results: list[tuple[str, list[int | str], str]]):
    """The kernel whose name holds the row's op and whose result has the row's shape."""
    op = row.op.rsplit(".", 1)[-1]
    for name, shape, kernel in results:
        if shape == row.output_shape and (name == op or f"_{op}" in name or name.startswith(op)):
            return kernel, name if name.startswith("fused_") else ""
    return "", ""
