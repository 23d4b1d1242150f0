"""Passes that fill a :class:`~tvm_sparse.report.CompileReport` as the pipeline runs.

They never change the module. ``CollectOpReport`` goes before legalization and writes one row
per operator, taking pattern and reason from the ``"tvm_sparse.decisions"`` attribute of the
sparsity passes; ``CollectFusionGroups`` goes between ``FuseOps`` and ``FuseTIR`` and remembers
which operators share a kernel; ``CollectKernelReport`` goes after scheduling and names the
kernel that computes each row. ``CollectComputeDtypes`` goes after ``ConvertComputeDtype`` and
gives each row the dtype its op computes in.
"""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import relax, tirx

from ..report import CompileReport, OpRecord
from ..schedules.apply_schedules import KERNEL_ATTR, PASSED_OVER_ATTR, UNSCHEDULED

__all__ = [
    "CollectComputeDtypes",
    "CollectFusionGroups",
    "CollectKernelReport",
    "CollectOpReport",
]

#: What each pass decided per layer (and why), read into the report; one place for every pass.
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
        out_axis = str(call.attrs.kernel_layout).index("O")  # OIHW, or HWIO once NHWC
        per_output = _numel(w_shape) // max(_numel(w_shape[out_axis : out_axis + 1]), 1)
        return 2 * _numel(out_shape) * per_output
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
                        layer=name if decision else "",
                        speedup=float(decision.get("speedup", 0.0)),
                    )
                )
        _attach_decisions_to_kernels(rows)
        self.report.rows = rows
        return mod


def _attach_decisions_to_kernels(rows: list[OpRecord]) -> None:
    """Move a sparse decision from the binding that kept the layer's name to its kernel's row.

    ``RewriteToSparse`` keeps the original binding name on the layer's result, which may be a
    reshape after the sparse kernel; the report shows the decision on the kernel itself.
    """
    for i, row in enumerate(rows):
        if not row.kernel or row.kernel == row.op or row.kernel.startswith("dense"):
            continue
        for kernel_row in reversed(rows[max(0, i - 3) : i]):
            if kernel_row.op == row.kernel and kernel_row.pattern == "dense":
                kernel_row.kernel, kernel_row.pattern = row.kernel, row.pattern
                kernel_row.reason, kernel_row.layer = row.reason, row.layer
                kernel_row.speedup = row.speedup
                row.kernel, row.pattern, row.layer, row.speedup = "", "dense", "", 0.0
                row.reason = f"layout of {kernel_row.name}'s result"
                break


def _is_tensor(expr: relax.Expr) -> bool:
    return isinstance(expr.ty, relax.TensorType)


def _nbytes(const: tvm.ir.Constant) -> int:
    ty = const.ty
    if not isinstance(ty, relax.TensorType):
        return 0
    return _numel(_dims(ty)) * np.dtype(str(ty.dtype)).itemsize


@tvm.transform.module_pass(opt_level=0, name="CollectComputeDtypes")
class CollectComputeDtypes:
    """Set each row's ``dtype``: its op's input dtype, ``in->out`` where the op changes it (a
    matmul taking fp16 and accumulating in fp32: ``float16->float32``); and its weight bytes
    in the dtype its weights are now cast to (folded after this pass)."""

    def __init__(self, report: CompileReport):
        self.report = report

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        dtypes, weight_bytes, values = {}, {}, {}
        for block in mod["main"].body.blocks:
            for binding in block.bindings:
                values[binding.var] = binding.value
                if not isinstance(binding.value, relax.Call):
                    continue
                args = binding.value.args
                if binding.value.op == tvm.ir.Op.get("relax.call_tir"):
                    args = args[1].fields
                ins = [str(a.ty.dtype) for a in args if _is_tensor(a)]
                out = str(binding.var.ty.dtype) if _is_tensor(binding.var) else ""
                dtype = ins[0] if ins else out
                dtypes[binding.var.name] = dtype if out in ("", dtype) else f"{dtype}->{out}"
                weight_bytes[binding.var.name] = sum(_weight_bytes(a, values) for a in args)
        for row in self.report.rows:
            if row.name not in dtypes and row.op == "relax.astype":
                # a cast into an fp16 kernel, a no-op once the model is fp16: the conversion
                # dropped it, so nothing computes it
                row.flops, row.kernel = 0, "removed"
                row.reason = "the cast is a no-op after the compute dtype conversion"
                continue
            row.dtype = dtypes.get(row.name, row.dtype)
            row.weight_bytes = weight_bytes.get(row.name, row.weight_bytes)
        return mod


def _weight_bytes(arg: relax.Expr, values: dict) -> int:
    """Bytes of a constant argument, or of a constant an ``astype`` binding casts."""
    value = values.get(arg)
    if isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.astype"):
        if isinstance(value.args[0], tvm.ir.Constant):
            bits = tvm.DataType(str(value.attrs.dtype)).bits
            return _numel(_dims(arg.ty)) * bits // 8
    return _nbytes(arg) if isinstance(arg, tvm.ir.Constant) else 0


def _call_tir_bindings(func: relax.Function):
    call_tir = tvm.ir.Op.get("relax.call_tir")
    for block in func.body.blocks:
        for binding in block.bindings:
            call = binding.value
            if isinstance(call, relax.Call) and call.op == call_tir:
                yield binding, call.args[0], list(call.args[1].fields)


@tvm.transform.module_pass(opt_level=0, name="CollectFusionGroups")
class CollectFusionGroups:
    """Remember which legalized kernel computes each binding and how ``FuseOps`` groups them.

    Run it twice: after ``LegalizeOps`` (each binding of ``main`` calls a PrimFunc named after
    its op) and after ``FuseOps`` (each fused function lists the PrimFuncs it absorbed).
    ``FuseOps`` renames bindings, so bindings are matched to groups by the PrimFuncs they call
    and the PrimFuncs that produce their arguments.
    """

    def __init__(self, report: CompileReport):
        self.report = report
        self.prim_of: dict[str, str] = {}
        self.producers_of: dict[str, list[str]] = {}
        self.groups: dict[str, list[str]] = {}
        self._assigned: dict[str, str | None] = {}

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        fused = {
            gvar.name_hint: func
            for gvar, func in mod.functions_items()
            if isinstance(func, relax.Function) and func.attrs and func.attrs.get("Primitive")
        }
        if not fused:
            for binding, gvar, args in _call_tir_bindings(mod["main"]):
                self.prim_of[binding.var.name] = gvar.name_hint
                self.producers_of[binding.var.name] = [
                    a.name for a in args if isinstance(a, relax.Var)
                ]
            return mod
        self.groups = {
            name: [gvar.name_hint for _, gvar, _ in _call_tir_bindings(func)]
            for name, func in fused.items()
        }
        self._assigned.clear()
        return mod

    def group_of(self, name: str) -> str | None:
        """The fused function that computes binding ``name``, if it was fused.

        Ask in program order: a group is connected, so a binding joins its producer's group
        when that group calls its PrimFunc.
        """
        if name not in self._assigned:
            self._assigned[name] = self._find_group(name)
        return self._assigned[name]

    def _find_group(self, name: str) -> str | None:
        prim = self.prim_of.get(name)
        if prim is None:
            return None
        candidates = [g for g, members in self.groups.items() if prim in members]
        if not candidates:
            return None
        for producer in self.producers_of.get(name, []):
            # a producer without a report row (a cast ConvertComputeDtype added) is placed
            # here; its own producers come before it, so this stays shallow
            group = self.group_of(producer)
            if group in candidates:
                return group
        # Several groups call the same PrimFunc (same op, same shapes): prefer the group that
        # also holds the kernels of this binding's producers and consumers, then the smallest.
        neighbours = [self.prim_of.get(p) for p in self.producers_of.get(name, [])]
        neighbours += [self.prim_of[n] for n, args in self.producers_of.items() if name in args]

        def score(group: str) -> tuple[int, int]:
            members = self.groups[group]
            return (-sum(n in members for n in neighbours), len(members))

        return min(candidates, key=score)


@tvm.transform.module_pass(opt_level=0, name="CollectKernelReport")
class CollectKernelReport:
    """Name, in each report row, the scheduled kernel that computes it."""

    def __init__(self, report: CompileReport, fusion: CollectFusionGroups):
        self.report = report
        self.fusion = fusion

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        kernels = {
            gvar.name_hint: str(func.attrs.get(KERNEL_ATTR, "")) if func.attrs else ""
            for gvar, func in mod.functions_items()
            if isinstance(func, tirx.PrimFunc)
        }
        unscheduled = []
        for row in self.report.rows:
            group = self.fusion.group_of(row.name)
            prim = group or self.fusion.prim_of.get(row.name, "")
            kernel = kernels.get(prim, "")
            if kernel and row.kernel == "dense-shrunk":
                row.kernel = f"{kernel} (shrunk)"
            elif kernel and (not row.kernel or row.kernel == "dense"):
                row.kernel = kernel
            elif not row.kernel:
                row.kernel = "vm builtin" if row.flops == 0 else ""
            row.fused_into = group or ""
            if kernel == UNSCHEDULED:
                unscheduled.append(row.name)
        if unscheduled:
            self.report.notes.append(
                f"no schedule rule claimed {', '.join(unscheduled)}: these run as plain loops"
            )
        for gvar, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc) and func.attrs and PASSED_OVER_ATTR in func.attrs:
                self.report.notes.append(f"{gvar.name_hint}: {func.attrs[PASSED_OVER_ATTR]}")
        return mod
