"""ConvertToNHWC: run convolution networks channels-last, where CPU kernels vectorise best."""

from __future__ import annotations

import tvm
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..kernels.winograd_conv2d import winograd_applies
from ..targets.backend import backend_of
from ..targets.facts import vector_lanes
from ._bindings import op_name
from .collect_report import DECISIONS_ATTR
from .fold_constants_on_host import FoldConstantsOnHost

__all__ = ["ConvertToNHWC"]

_LAYOUT_OPS = ("relax.permute_dims", "relax.layout_transform")


def _desired_layout(call: relax.Call) -> dict[str, list[str]]:
    """``ConvertLayout``'s callback: NHWC for dense and depthwise convs."""
    name = call.op.name
    if name == "relax.nn.conv2d":
        attrs = call.attrs
        if attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW":
            return {}
        shape = call.args[0].ty.shape
        groups = int(attrs.groups)
        in_channels = shape.values[1] if shape is not None else None
        depthwise = (
            isinstance(in_channels, tirx.IntImm)
            and groups == int(in_channels)
            and call.ty.shape is not None
            and isinstance(call.ty.shape.values[1], tirx.IntImm)
            and int(call.ty.shape.values[1]) == groups
        )
        # grouped convs (1 < groups < channels) have no NHWC schedule: they stay NCHW (asked
        # for explicitly: with no wish they would follow an NHWC input)
        return {name: ["NHWC", "HWIO"] if groups == 1 or depthwise else ["NCHW", "OIHW"]}
    # pools, elementwise ops and reductions take no desired layout: they follow their input
    return {}


@mutator
class _ClipDecomposer(PyExprMutator):
    """``clip(x, lo, hi)`` as ``minimum(maximum(x, lo), hi)``: ``clip`` has no layout inference,
    so ``ConvertLayout`` would wrap every ReLU6 in two transposes; the binary ops have it."""

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = self.visit_expr(binding.value)
        is_clip = isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.clip")
        args = value.args[1:] if is_clip else []
        bounds = [a.value for a in args if isinstance(a, (tirx.FloatImm, tirx.IntImm))]
        if not is_clip or len(bounds) != 2:
            self.builder_.emit_normalized(relax.VarBinding(binding.var, value))
            return
        x, dtype = value.args[0], value.args[0].ty.dtype
        low = self.builder_.emit(
            relax.op.maximum(x, relax.const(bounds[0], dtype)), name_hint=f"{binding.var.name}_low"
        )
        clipped = self.builder_.normalize(relax.op.minimum(low, relax.const(bounds[1], dtype)))
        self.builder_.emit_normalized(relax.VarBinding(binding.var, clipped))


@mutator
class _LayoutRenamer(PyExprMutator):
    """Give the layout transposes ``ConvertLayout`` adds names of their own, so that every
    binding of the original function keeps its name (the report and per-layer decisions key
    on them)."""

    def __init__(self, mod: tvm.IRModule, original: dict[str, str], params: set[str]):
        super().__init__(mod)
        self.original = original
        self.taken = set(params)
        self.claimed: set[str] = set()

    def _fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken or name in self.original:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = self.visit_expr(binding.value)
        old = binding.var
        op = op_name(value)
        keeps = (
            old.name in self.original
            and old.name not in self.claimed
            and (self.original[old.name] == op or op not in _LAYOUT_OPS)
        )
        if keeps:
            self.claimed.add(old.name)
            self.taken.add(old.name)
            self.builder_.emit_normalized(relax.VarBinding(old, value))
            return
        axes = [int(a) for a in value.attrs.axes] if op == "relax.permute_dims" else []
        base = {(0, 2, 3, 1): "to_nhwc", (0, 3, 1, 2): "to_nchw"}.get(tuple(axes), "layout")
        var_cls = relax.DataflowVar if isinstance(old, relax.DataflowVar) else relax.Var
        new = var_cls(self._fresh(base), old.ty)
        self.builder_.emit_normalized(relax.VarBinding(new, value))
        self.set_var_remap(old, new)


def _static(shape) -> list[int] | None:
    if shape is None or not all(isinstance(d, tirx.IntImm) for d in shape.values):
        return None
    return [int(d) for d in shape.values]


@mutator
class _PointwiseToMatmul(PyExprMutator):
    """An NHWC 1x1 conv of stride 1 without padding is ``X[N*H*W, C] @ W[C, F]``: reshapes
    (views) around a matmul, which the ``Matmul`` schedule tiles across row ends. The names
    of the converted convs are kept in ``converted``: their decisions move to the matmul."""

    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.converted: list[str] = []

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = self.visit_expr(binding.value)
        matmul = self._as_matmul(value)
        if matmul is None:
            self.builder_.emit_normalized(relax.VarBinding(binding.var, value))
            return
        x, w, (n, h, wd, c), f = matmul
        name = binding.var.name
        self.converted.append(name)
        rows = self.builder_.emit(relax.op.reshape(x, [n * h * wd, c]), name_hint=f"{name}_rows")
        product = self.builder_.emit(
            relax.op.matmul(rows, relax.op.reshape(w, [c, f])), name_hint=f"{name}_matmul"
        )
        out = self.builder_.normalize(relax.op.reshape(product, [n, h, wd, f]))
        self.builder_.emit_normalized(relax.VarBinding(binding.var, out))

    @staticmethod
    def _as_matmul(value: relax.Expr):
        if not (isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.nn.conv2d")):
            return None
        attrs = value.attrs
        x, w = value.args
        x_shape, w_shape = _static(x.ty.shape), _static(w.ty.shape)
        if (
            attrs.data_layout != "NHWC"
            or attrs.kernel_layout != "HWIO"
            or attrs.out_layout != "NHWC"
            or int(attrs.groups) != 1
            or any(int(v) != 1 for v in [*attrs.strides, *attrs.dilation])
            or any(int(v) != 0 for v in attrs.padding)
            or x_shape is None
            or w_shape is None
            or w_shape[:2] != [1, 1]
            or str(attrs.out_dtype) not in ("", "None", "void", str(x.ty.dtype))
        ):
            return None
        return x, w, x_shape, w_shape[3]


@mutator
class _CancelTransposes(PyExprMutator):
    """``permute_dims(permute_dims(x, a), b)`` as one transpose, or as ``x`` where ``b`` undoes
    ``a``: a model that is channels-last at its edges (an ONNX export of an NHWC network, a
    layer timed between its channels-last neighbours) converts with no transpose left there.
    ``ConvertLayout`` turns the last transpose of such a model into an identity, but keeps the
    pair it adds after the first."""

    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.axes: dict[relax.Var, tuple[relax.Expr, list[int]]] = {}

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = self.visit_expr(binding.value)
        if op_name(value) != "relax.permute_dims" or value.attrs.axes is None:
            self.builder_.emit_normalized(relax.VarBinding(binding.var, value))
            return
        source, axes = value.args[0], [int(a) for a in value.attrs.axes]
        if source in self.axes:  # a transpose of a transpose: compose them
            source, inner = self.axes[source]
            axes = [inner[a] for a in axes]
        self.axes[binding.var] = (source, axes)
        if axes == list(range(len(axes))):
            value = source  # an alias; the transposes that made it are left to dead-code removal
        else:
            value = self.builder_.normalize(relax.op.permute_dims(source, axes))
        self.builder_.emit_normalized(relax.VarBinding(binding.var, value))


def _framed(binding: relax.VarBinding, producers: dict[relax.Var, relax.Expr]) -> bool:
    """Whether a conv reads a transpose from channels-last: converting it costs no transpose."""
    source = producers.get(binding.value.args[0])
    return (
        op_name(source) == "relax.permute_dims"
        and source.attrs.axes is not None
        and [int(a) for a in source.attrs.axes] == [0, 3, 1, 2]
    )


def _runs_as_winograd(call: relax.Call) -> bool:
    """Whether an NCHW conv would be a ``winograd_conv2d`` once NHWC (for the current target)."""
    target = tvm.target.Target.current(allow_none=True)
    attrs = call.attrs
    x_shape, w_shape = _static(call.args[0].ty.shape), _static(call.args[1].ty.shape)
    backend = backend_of(target, allow_none=True)
    if backend is None or not backend.winograd or x_shape is None or w_shape is None:
        return False
    (n, c, h, w), (f, wc, kh, kw) = x_shape, w_shape
    why = winograd_applies(
        (n, h, w, c), (kh, kw, wc, f), vector_lanes(target), strides=attrs.strides,
        padding=attrs.padding, dilation=attrs.dilation, groups=attrs.groups,
    )  # fmt: skip
    return why is None


def _moved_decisions(func: relax.Function, converted: list[str]) -> relax.Function:
    """A pointwise conv's decision (a shrunk or dense layer) on the matmul it became, where the
    report looks for it: the conv's own name is left on a reshape."""
    decisions = (func.attrs or {}).get(DECISIONS_ATTR)
    if not decisions or not any(name in decisions for name in converted):
        return func
    moved = {str(k): v for k, v in decisions.items()}
    for name in converted:
        if name in moved:
            moved[f"{name}_matmul"] = moved.pop(name)
    return func.with_attr(DECISIONS_ATTR, moved)


def _binding_ops(func: relax.Function) -> dict[str, str]:
    ops: dict[str, str] = {}
    for block in func.body.blocks:
        for binding in block.bindings:
            ops.setdefault(binding.var.name, op_name(binding.value))
    return ops


@tvm.transform.module_pass(opt_level=0, name="ConvertToNHWC")
class ConvertToNHWC:
    """Convert dense and depthwise conv2d, and pooling, from NCHW to NHWC.

    In NCHW a vector of output channels is strided in memory: kernels that vectorise over
    channels gather their residual inputs and scatter their outputs, and kernels that vectorise
    over columns lose their vectors on the 14- and 7-pixel rows of late layers (MobileNetV2's
    depthwise layers ran at 10-30 GFLOP/s). In NHWC the channels of a pixel are contiguous for
    every op and any channel count (24 included); the schedules of ``Conv2dNHWC`` and ``Pool``
    vectorise over them. Built on ``relax.transform.ConvertLayout``: activations and their
    elementwise ops, reductions and concatenations follow the convs into NHWC, the transposes
    it needs are left at the model's edges (and around ops it cannot convert: grouped convs,
    kernels of the sparse rewrite), and weight transposes fold at compile time. ``clip`` (ReLU6)
    has no layout inference in TVM 0.27 and is written as ``minimum(maximum(x, lo), hi)`` first.

    Before::

        lv1 = R.nn.conv2d(x, w)                                  # NCHW, OIHW
        lv2 = R.nn.relu(lv1)

    After::

        to_nhwc = R.permute_dims(x, axes=[0, 2, 3, 1])
        lv1 = R.nn.conv2d(to_nhwc, w_hwio, data_layout="NHWC", kernel_layout="HWIO")
        lv2 = R.nn.relu(lv1)
        to_nchw = R.permute_dims(lv2, axes=[0, 3, 1, 2])

    A pointwise conv (1x1, stride 1, no padding) becomes the matmul it is,
    ``X[N*H*W, C] @ W[C, F]`` between reshapes (views), for the ``Matmul`` schedule. Every
    binding keeps its name; the transposes get names of their own (``to_nhwc``, ``to_nchw``),
    and those of constant weights are folded. Pipeline: after the sparsity passes (which read
    NCHW / OIHW weights), before ``LegalizeOps``; llvm targets only.

    Parameters
    ----------
    min_convs : int
        Convert only models with at least this many dense or depthwise convs: a lone conv
        would pay for two transposes of its activations (at the model's input and output)
        and gain nothing from the layout between convs. A lone 3x3 stride-1 conv that
        ``RewriteToWinograd`` then takes is converted all the same (under ``with target:``):
        Winograd's 2.25x fewer multiplies pay for the two transposes (the lone 3x3 convs of
        benchmarks/x86.py). So is a conv that reads a transpose from channels-last: the
        transposes cancel.
    """

    def __init__(self, min_convs: int = 2) -> None:
        self.min_convs = min_convs

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        main = mod["main"]
        nhwc_convs = [
            b
            for block in main.body.blocks
            for b in block.bindings
            if isinstance(b.value, relax.Call)
            and isinstance(b.value.op, tvm.ir.Op)
            and _desired_layout(b.value).get(b.value.op.name, [""])[0] == "NHWC"
        ]
        producers = {b.var: b.value for block in main.body.blocks for b in block.bindings}
        if len(nhwc_convs) < self.min_convs and not any(
            _runs_as_winograd(b.value) or _framed(b, producers) for b in nhwc_convs
        ):
            return mod
        decomposer = _ClipDecomposer(mod)
        mod = mod.clone()
        mod["main"] = decomposer.visit_expr(main)
        original = _binding_ops(mod["main"])
        mod = relax.transform.ConvertLayout({}, layout_cb=_desired_layout)(mod)
        func = mod["main"]
        renamer = _LayoutRenamer(mod, original, {p.name for p in func.params})
        mod["main"] = renamer.visit_expr(func)
        mod["main"] = _CancelTransposes(mod).visit_expr(mod["main"])
        pointwise = _PointwiseToMatmul(mod)
        mod["main"] = _moved_decisions(pointwise.visit_expr(mod["main"]), pointwise.converted)
        # transposed (and reshaped) weights become constants again
        mod = relax.transform.FoldConstant()(FoldConstantsOnHost()(mod))
        return relax.transform.DeadCodeElimination()(mod)
