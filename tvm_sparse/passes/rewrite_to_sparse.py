"""Rewrite matmuls and conv2ds with pruned constant weights into sparse kernels, where faster.

``RewriteToSparse`` reads the records ``DetectSparsity`` left under ``"tvm_sparse.weights"``,
decides per layer (sparse format or dense) with the measured cost model of
:mod:`tvm_sparse.kernels.cost_model`, compresses the chosen weights to BSR or N:M constants
and replaces the op by a ``call_tir`` of a kernel that is already scheduled
(``tirx.is_scheduled``, ``"tvm_sparse.kernel"``), which ``ApplySchedules`` then skips. Every
candidate gets a row in ``"tvm_sparse.decisions"``: the kernel, the pattern and why.

Before::

    @R.function
    def main(x: R.Tensor((128, 768), "float32")):
        with R.dataflow():
            lv = R.matmul(x, metadata["ir.GenericConst"][0])  # (768, 3072), 90% zero 16x1 blocks
            R.output(lv)
        return lv

After::

    @R.function
    def main(x: R.Tensor((128, 768), "float32")):
        R.func_attr({"tvm_sparse.decisions": {"lv": {"kernel": "bsr_matmul[16x1]",
            "pattern": "block 16x1", "reason": "density 0.10 in 16x1 blocks: est. 6.2x ..."}}})
        with R.dataflow():
            lv = R.call_tir(cls.bsr_matmul_16x1, (x, data, indices, indptr),
                            out_ty=R.Tensor((128, 3072), "float32"))
            R.output(lv)
        return lv

Leading batch dims of a matmul are folded into the rows (``reshape``, a view). Conv2d
(``NCHW``/``OIHW``, ``groups=1``) runs 1x1 stride-1 convolutions directly on the activations
and larger ones through ``im2col``. Bias and activations stay separate Relax ops. Anything the
pass cannot handle (symbolic shapes, non-fp32, grouped convolution, other layouts) keeps its
dense op and its decision row says why.

CUDA targets use the kernels of :mod:`tvm_sparse.kernels.gpu` and, with no GPU to calibrate
on, a fixed rule in place of the cost model (every reason starts "uncalibrated GPU rule"):
BSR when a block of at least 8 rows (the detected one, 16x1 or 8x1) covers the weight at block
density <= 0.3, else the compressed N:M kernel for a matmul weight that conforms to 2:4 or 4:8,
else dense. Activations are reshaped to ``(1, M, K)`` for the kernels. Only 1x1, stride-1,
unpadded ``NCHW`` convolutions go sparse (their activations are the kernel's ``KM`` input);
others stay dense, there being no GPU im2col yet. Config choices are honoured as on CPUs. Other
non-llvm targets keep every layer dense.

Pipeline: after ``DetectSparsity`` (and ``ShrinkPrunedChannels`` with a second
``DetectSparsity``), before ``LegalizeOps``.

Configuration (``sparsity=``)
-----------------------------
``"auto"``
    Per layer, the fastest of the detected block shape, 1x1 (unstructured) and N:M, if the
    cost model estimates it at least ``min_speedup`` (1.1) times faster than dense.
``"off"``
    Everything stays dense (decisions still recorded).
``dict``
    ``{binding_name: choice, ..., "*": default_choice}``; choices are ``"auto"``, ``"dense"``,
    ``"bsr"`` (detected block), ``"bsr:RxC"`` (a given block), ``"unstructured"`` (1x1 BSR),
    ``"nm"`` (detected N:M) and ``"nm:N:M"``. A named choice is honoured even where the model
    says it is slower (the reason says so). Unknown choices and names that are not candidates
    raise ``ValueError`` listing the valid ones. A :class:`SparsityConfig` is accepted too.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm
from tvm import relax
from tvm.ir import IRModule
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.target import Target

from ..kernels.bsr_matmul import BSRMatmulKnobs, bsr_matmul, bsr_matmul_kernel_name
from ..kernels.cost_model import Calibration, load_calibration
from ..kernels.formats import to_bsr, to_nm
from ..kernels.gpu import CUDATileKnobs, cuda_bsr_matmul, cuda_nm_matmul, nm_group_offsets
from ..kernels.nm_matmul import NMMatmulKnobs, nm_matmul, nm_matmul_kernel_name
from ..kernels.sparse_conv2d import Conv2DGeometry, im2col
from ..kernels.winograd_conv2d import winograd_applies
from ..schedules.cpu.base import vector_lanes
from ._bindings import function_bindings, unique_binding_names
from .detect_sparsity import WEIGHTS_ATTR, WeightSparsity, constant_weight_of

__all__ = ["DECISIONS_ATTR", "LayerChoice", "RewriteToSparse", "SparsityConfig"]

#: Effective bandwidth of im2col's copy: half the 27 GB/s measured by benchmarks/roofline.py on
#: the 2-core reference host, since its reads are strided.
_IM2COL_BYTES_PER_S = 13.7e9

#: How much faster a dense conv runs as ``winograd_conv2d`` (``RewriteToWinograd``) than the
#: dense rate the calibration measures: ResNet-18's 3x3 convs ran 2.3-2.5x faster so.
_WINOGRAD_SPEEDUP = 2.2

#: Block shapes ``"auto"`` always weighs besides the detected one: the vector-friendly rows.
_ROW_BLOCKS = ((16, 1), (8, 1))

#: PrimFunc attribute: FLOPs the sparse kernel performs (stored values only), for the report.
FLOPS_ATTR = "tvm_sparse.flops"

DECISIONS_ATTR = "tvm_sparse.decisions"
CHOICES = ("auto", "dense", "bsr", "bsr:RxC", "unstructured", "nm", "nm:N:M")


@dataclass(frozen=True)
class LayerChoice:
    """What to do with one layer: ``kind`` in auto/dense/bsr/nm, optionally a fixed shape."""

    kind: str = "auto"
    block: tuple[int, int] | None = None
    nm: tuple[int, int] | None = None

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
                n, m = text[3:].split(":")
                pair = (int(n), int(m))
                if not 0 < pair[0] <= pair[1]:
                    raise ValueError
                return cls(kind="nm", nm=pair)
        except ValueError:
            pass
        raise ValueError(
            f"{key}: unknown sparsity choice {value!r}; choose one of {', '.join(CHOICES)}"
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


@tvm.transform.module_pass(opt_level=0, name="RewriteToSparse")
class RewriteToSparse:
    """Replace pruned matmul / conv2d weights by scheduled sparse kernels where they are faster.

    Parameters
    ----------
    target : tvm.target.Target | str | dict, optional
        Decides vector width and the calibration table; the current target if omitted.
    sparsity : "auto" | "off" | dict | SparsityConfig
        See the module docstring.
    calibration : Calibration, optional
        Cost-model table; :func:`~tvm_sparse.kernels.load_calibration` of the target if omitted.
    """

    def __init__(
        self,
        target: Target | str | dict | None = None,
        *,
        sparsity: Any = "auto",
        calibration: Calibration | None = None,
    ) -> None:
        self.target = _as_target(target)
        self.config = SparsityConfig.from_arg(sparsity)
        self.calibration = calibration

    def transform_module(self, mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
        calibration = self.calibration or load_calibration(self.target)
        candidates = {
            name
            for func in mod.functions.values()
            if isinstance(func, relax.Function) and func.attrs and WEIGHTS_ATTR in func.attrs
            for name in func.attrs[WEIGHTS_ATTR]
        }
        unknown = sorted(set(self.config.layers) - candidates)
        if unknown:
            raise ValueError(
                f"sparsity: {unknown} are not sparsity candidates of this model; "
                f"candidates are {sorted(candidates)}"
            )
        if self.target.kind.name not in ("llvm", "cuda"):
            return _record_dense(mod, f"no sparse kernel for {self.target.kind.name} yet: dense")
        rewriter = _SparseRewriter(mod, self.target, self.config, calibration)
        for gv, func in list(mod.functions_items()):
            if isinstance(func, relax.Function) and func.attrs and WEIGHTS_ATTR in func.attrs:
                rewriter.rewrite_function(gv, func)
        return rewriter.builder_.get()


def _record_dense(mod: IRModule, reason: str) -> IRModule:
    """Leave every candidate dense and say why in ``"tvm_sparse.decisions"``."""
    for gv, func in list(mod.functions_items()):
        if not (isinstance(func, relax.Function) and func.attrs and WEIGHTS_ATTR in func.attrs):
            continue
        decisions = {str(k): dict(v) for k, v in (func.attrs.get(DECISIONS_ATTR) or {}).items()}
        for name in map(str, func.attrs[WEIGHTS_ATTR]):
            if decisions.get(name, {}).get("kernel", "dense") == "dense":
                decisions[name] = _Plan("dense", "dense", reason).record()
        mod[gv] = func.with_attr(DECISIONS_ATTR, decisions)
    return mod


def _as_target(target: Target | str | dict | None) -> Target:
    if isinstance(target, Target):
        return target
    if target is None:
        current = Target.current(allow_none=True)
        return current if current is not None else Target("llvm")
    return Target(target)


# -- decisions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    kernel: str  # "dense" or a kernel name
    pattern: str
    reason: str
    block: tuple[int, int] | None = None
    nm: tuple[int, int] | None = None

    def record(self) -> dict[str, str]:
        return {"kernel": self.kernel, "pattern": self.pattern, "reason": self.reason}


def _pattern_of(block: tuple[int, int] | None, nm: tuple[int, int] | None) -> str:
    if nm is not None:
        return f"{nm[0]}:{nm[1]}"
    if block == (1, 1):
        return "unstructured"
    return f"block {block[0]}x{block[1]}"


def _stored_bsr(info: WeightSparsity, block: tuple[int, int]) -> int:
    n, k = info.shape
    if block == (1, 1):
        return round(info.density * n * k)
    if tuple(info.block_shape) == block:
        r, c = block
        return round(info.block_density * -(-n // r) * -(-k // c) * r * c)
    return -1  # unknown without the weight: measured by the caller


def _kernel_key(calibration: Calibration, block: tuple[int, int]) -> str:
    """The table entry for ``block``: itself, else the measured block of closest shape."""
    key = bsr_matmul_kernel_name(block)
    if calibration.has_kernel(key):
        return key
    known = [k for k in calibration.sparse if k.startswith("bsr_matmul[")]

    def distance(name: str) -> float:
        r, c = (int(v) for v in name[len("bsr_matmul[") : -1].split("x"))
        return abs(math.log2(r) - math.log2(block[0])) + abs(math.log2(c) - math.log2(block[1]))

    return min(known, key=distance)


def _runs_as_winograd(geom: Conv2DGeometry, out_channels: int, target: Target) -> bool:
    """Whether the dense form of this conv would be a ``winograd_conv2d`` on ``target``."""
    if target.kind.name != "llvm":
        return False
    in_shape = (geom.batch, geom.height, geom.width, geom.channels)
    weight_shape = (*geom.kernel, geom.channels, out_channels)
    why = winograd_applies(
        in_shape, weight_shape, vector_lanes(target), strides=geom.strides,
        padding=geom.padding, dilation=geom.dilation,
    )  # fmt: skip
    return why is None


def _decide(
    name: str,
    info: WeightSparsity,
    weight: np.ndarray,
    op: str,
    m: int,
    config: SparsityConfig,
    calibration: Calibration,
    overhead_s: float = 0.0,
    dense_speedup: float = 1.0,
) -> _Plan:
    """Choose the kernel for one layer; ``overhead_s`` is time the sparse path adds (im2col),
    ``dense_speedup`` how much faster than the calibrated rate the dense kernel runs."""
    choice = config.choice_for(name)
    n, k = info.shape
    density = info.density
    if choice.kind == "dense":
        return _Plan("dense", "dense", "dense requested by the sparsity config")
    # Candidates (block, nm) to compare; forced choices have exactly one.
    options: list[tuple[tuple[int, int] | None, tuple[int, int] | None]] = []
    if choice.kind in ("auto", "bsr"):
        block = choice.block or tuple(info.block_shape)
        options.append((block, None))
        if choice.kind == "auto":
            # Row blocks also pay off on patterns they do not fit exactly, e.g. 16x1 blocks
            # shifted off the grid when ShrinkPrunedChannels removed some rows; the cost model
            # weighs the zeros they store.
            for extra in ((1, 1), *_ROW_BLOCKS):
                if extra != block:
                    options.append((extra, None))
    if choice.kind in ("auto", "nm"):
        wanted = choice.nm or info.nm
        if op != "matmul":
            if choice.kind == "nm":  # conv runs N:M weights through the 1x1 BSR kernel
                options.append(((1, 1), None))
        elif wanted is not None and (choice.nm is None or _conforms(weight, wanted)):
            options.append((None, tuple(wanted)))
        elif choice.kind == "nm":
            return _Plan(
                "dense", "dense", f"N:M requested but the weight is not {wanted or 'N:M'} sparse"
            )
    forced = choice.kind != "auto"
    best = None
    for block, nm in options:
        if nm is not None:
            key = nm_matmul_kernel_name(nm)
            stored = n * (-(-k // nm[1])) * nm[0]
            if not calibration.has_kernel(key):
                continue
            kernel = key
        else:
            stored = _stored_bsr(info, block)
            if stored < 0:
                stored = to_bsr(weight, block).data.size
            key = _kernel_key(calibration, block)
            kernel = bsr_matmul_kernel_name(block)
        est = calibration.estimate(key, m, n, k, stored, stored / max(n * k, 1))
        est = dataclasses.replace(
            est, sparse_s=est.sparse_s + overhead_s, dense_s=est.dense_s / dense_speedup
        )
        if best is None or est.sparse_s < best[0].sparse_s:
            best = (est, kernel, block, nm)
    if best is None:
        return _Plan("dense", "dense", f"density {density:.2f}: no sparse kernel fits")
    est, kernel, block, nm = best
    pattern = _pattern_of(block, nm)
    where = f"in {block[0]}x{block[1]} blocks" if nm is None else f"as {nm[0]}:{nm[1]}"
    if nm is None and info.nm:
        where += f" (conforms to {info.nm[0]}:{info.nm[1]})"
    if forced:
        return _Plan(
            kernel,
            pattern,
            f"{pattern} requested by the sparsity config (density {density:.2f} {where}: "
            f"est. {est.speedup:.1f}x of dense; {calibration.evidence})",
            block,
            nm,
        )
    if density == 0.0 or est.speedup >= config.min_speedup:
        return _Plan(
            kernel,
            pattern,
            f"density {density:.2f} {where}: est. {est.speedup:.1f}x faster than dense "
            f"({calibration.evidence})",
            block,
            nm,
        )
    if est.sparse_s == float("inf"):
        return _Plan(
            "dense",
            "dense",
            f"density {density:.2f} {where}: denser than any calibrated sparse kernel, kept dense "
            f"({calibration.evidence})",
        )
    return _Plan(
        "dense",
        "dense",
        f"density {density:.2f} {where}: sparse est. {est.speedup:.1f}x of dense, kept dense "
        f"({calibration.evidence})",
    )


def _conforms(weight: np.ndarray, nm: tuple[int, int]) -> bool:
    try:
        to_nm(weight, nm)
    except ValueError:
        return False
    return True


# -- the rewriter -----------------------------------------------------------------------------


def _static_shape(expr: relax.Expr) -> tuple[list[int], str] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    shape = ty.shape
    values = getattr(shape, "values", None)
    if values is None or not all(isinstance(v, tvm.tirx.IntImm) for v in values):
        return None
    return [int(v) for v in values], str(ty.dtype)


@mutator
class _SparseRewriter(PyExprMutator):
    def __init__(
        self, mod: IRModule, target: Target, config: SparsityConfig, calibration: Calibration
    ) -> None:
        super().__init__(mod)
        self.target = target
        self.config = config
        self.calibration = calibration
        self.knobs = BSRMatmulKnobs.for_target(target)
        self.nm_knobs = NMMatmulKnobs.for_target(target)
        self.cuda_knobs = CUDATileKnobs()
        self.cuda = target.kind.name == "cuda"
        self._names: dict[relax.Var, str] = {}
        self._values: dict[relax.Var, relax.Expr] = {}
        self._records: Mapping[str, Any] = {}
        self._decisions: dict[str, dict[str, str]] = {}

    def rewrite_function(self, gv: relax.GlobalVar, func: relax.Function) -> None:
        self._names = unique_binding_names(func)
        self._values = dict(function_bindings(func))
        self._records = func.attrs[WEIGHTS_ATTR]
        self._decisions = {}
        new_func = self.visit_expr(func)
        existing = func.attrs.get(DECISIONS_ATTR) if func.attrs else None
        merged = {str(k): dict(v) for k, v in (existing or {}).items()}
        for name, record in self._decisions.items():
            earlier = merged.get(name)
            if record["kernel"] == "dense" and earlier and earlier.get("kernel") != "dense":
                # a layer ShrinkPrunedChannels made smaller stays so; add why it is not sparse
                earlier["reason"] = f"{earlier.get('reason', '')}; {record['reason']}"
                continue
            if earlier and earlier.get("pattern") == "channel":  # why zero channels stayed
                record = {**record, "reason": f"{record['reason']}; {earlier.get('reason', '')}"}
            merged[name] = record
        for name in self._records:  # candidates this pass never reached keep a row too
            merged.setdefault(str(name), _Plan("dense", "dense", "op not found").record())
        new_func = new_func.with_attr(DECISIONS_ATTR, merged)
        self.builder_.update_func(gv, new_func)

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        name = self._names.get(binding.var)
        if name is None or name not in self._records:
            super().visit_var_binding_(binding)
            return
        self._layer = name  # intermediate bindings are named after the layer they compute
        new_value, plan = self._rewrite(name, binding.value)
        self._decisions[name] = plan.record()
        if new_value is None:
            super().visit_var_binding_(binding)
            return
        if isinstance(binding.var, relax.DataflowVar):
            new_var = self.builder_.emit(new_value, name_hint=binding.var.name)
        else:
            new_var = self.builder_.emit_output(new_value, name_hint=binding.var.name)
        self.set_var_remap(binding.var, new_var)

    # -- per op -------------------------------------------------------------------------------

    def _rewrite(self, name: str, call: relax.Expr) -> tuple[relax.Expr | None, _Plan]:
        found = constant_weight_of(call, self._values)
        if found is None:
            return None, _Plan("dense", "dense", "weight is not a constant the pass can read")
        weight, op_info = found
        info = WeightSparsity.from_attr(self._records[name])
        x = self.visit_expr(call.args[0])
        shape = _static_shape(x)
        out = _static_shape(call)
        if shape is None or out is None:
            return None, _Plan("dense", "dense", "symbolic or unknown shapes: kept dense")
        (x_shape, dtype), (out_shape, out_dtype) = shape, out
        if dtype != "float32" or out_dtype != "float32" or weight.dtype != np.float32:
            return None, _Plan("dense", "dense", f"dtype {dtype}: sparse kernels are fp32 only")
        if call.op.name == "relax.matmul":
            if len(x_shape) < 1:
                return None, _Plan("dense", "dense", "scalar activations")
            m = int(np.prod(x_shape[:-1])) if len(x_shape) > 1 else 1
            if self.cuda:
                plan = _decide_cuda(name, info, weight, "matmul", self.config)
                if plan.kernel == "dense":
                    return None, plan
                return self._cuda_matmul(x, out_shape, weight, m, plan), plan
            plan = _decide(name, info, weight, "matmul", m, self.config, self.calibration)
            if plan.kernel == "dense":
                return None, plan
            return self._matmul(x, x_shape, out_shape, weight, m, plan), plan
        attrs = call.attrs
        if attrs.data_layout != "NCHW" or attrs.out_layout != "NCHW" or int(attrs.groups) != 1:
            return None, _Plan(
                "dense",
                "dense",
                f"conv2d {attrs.data_layout}, groups={int(attrs.groups)}: only NCHW, groups=1",
            )
        batch, channels, height, width = x_shape
        geom = Conv2DGeometry(
            batch=batch,
            channels=channels,
            height=height,
            width=width,
            kernel=tuple(int(v) for v in op_info["kernel"]),
            strides=tuple(int(v) for v in attrs.strides),
            padding=tuple(int(v) for v in attrs.padding),
            dilation=tuple(int(v) for v in attrs.dilation),
        )
        if self.cuda:
            if not geom.is_pointwise:
                return None, _Plan(
                    "dense",
                    "dense",
                    f"{_GPU_RULE}: only 1x1, stride-1, unpadded conv2d maps onto the GPU kernels "
                    "(no GPU im2col kernel yet): dense",
                )
            plan = _decide_cuda(name, info, weight, "conv2d", self.config)
            if plan.kernel == "dense":
                return None, plan
            return self._cuda_pointwise_conv2d(x, x_shape, out_shape, weight, plan), plan
        oh, ow = geom.out_hw
        # im2col writes and the kernel reads a (K, OH*OW) copy of each image; the calibration
        # (matmuls) does not include that traffic.
        # The kernel runs image by image, so its rate is the one for M = OH*OW rows.
        copy_bytes = 0 if geom.is_pointwise else 8 * weight.shape[1] * oh * ow
        winograd = _runs_as_winograd(geom, weight.shape[0], self.target)
        plan = _decide(
            name, info, weight, "conv2d", oh * ow, self.config, self.calibration,
            overhead_s=copy_bytes / _IM2COL_BYTES_PER_S,
            dense_speedup=_WINOGRAD_SPEEDUP if winograd else 1.0,
        )  # fmt: skip
        if plan.kernel == "dense":
            return None, plan
        if plan.nm is not None:  # N:M conv weights run through the 1x1 BSR kernel
            plan = _Plan(bsr_matmul_kernel_name((1, 1)), plan.pattern, plan.reason, (1, 1))
        return self._conv2d(x, geom, out_shape, weight, plan), plan

    def _emit(self, expr: relax.Expr, suffix: str) -> relax.Var:
        return self.builder_.emit(expr, name_hint=f"{self._layer}_{suffix}")

    def _matmul(self, x, x_shape, out_shape, weight, m, plan: _Plan) -> relax.Expr:
        n, k = weight.shape
        x2 = x if len(x_shape) == 2 else self._emit(relax.op.reshape(x, (m, k)), "x2d")
        if plan.nm is not None:
            knobs = self.nm_knobs.resolve(m)
            mat = to_nm(weight, plan.nm, row_multiple=knobs.group)
            func = nm_matmul(m, k, n, plan.nm, mat.values.shape[0], knobs=knobs)
            func = func.with_attr(FLOPS_ATTR, 2 * m * int(mat.values.size))
            gv = self.builder_.add_func(func, _func_name(plan.kernel))
            args = [x2, relax.const(mat.values), relax.const(mat.columns)]
        else:
            knobs = self.knobs.resolve(plan.block, m, n)
            bsr = _nonempty_bsr(weight, plan.block, knobs.group)
            func = bsr_matmul(m, k, n, plan.block, bsr.nnzb, bsr.block_rows, knobs=knobs)
            func = func.with_attr(FLOPS_ATTR, 2 * m * int(bsr.data.size))
            gv = self.builder_.add_func(func, _func_name(plan.kernel))
            data = bsr.data_cr() if knobs.variant == "rows" else bsr.data
            if knobs.variant == "m":
                x2 = self._emit(relax.op.reshape(x2, (1, m, k)), "x3d")
            args = [x2, relax.const(data), relax.const(bsr.indices), relax.const(bsr.indptr)]
        y_shape = (1, m, n) if plan.nm is None and knobs.variant == "m" else (m, n)
        y = relax.call_tir(gv, args, out_ty=relax.TensorType(y_shape, "float32"))
        if list(y_shape) == list(out_shape):
            return y
        return relax.op.reshape(self._emit(y, "sparse"), out_shape)

    def _conv2d(self, x, geom: Conv2DGeometry, out_shape, weight, plan: _Plan) -> relax.Expr:
        n, k = weight.shape
        oh, ow = geom.out_hw
        hw = oh * ow
        if geom.is_pointwise:
            cols = self._emit(relax.op.reshape(x, (geom.batch, k, hw)), "cols")
        else:
            gv_col = self.builder_.add_func(im2col(geom), "im2col")
            cols = self._emit(
                relax.call_tir(
                    gv_col, [x], out_ty=relax.TensorType((geom.batch, k, hw), "float32")
                ),
                "cols",
            )
        knobs = self.knobs.resolve(
            plan.block, hw, n, batch=geom.batch, x_layout="KM", y_layout="NM"
        )
        bsr = _nonempty_bsr(weight, plan.block, knobs.group)
        func = bsr_matmul(
            hw,
            k,
            n,
            plan.block,
            bsr.nnzb,
            bsr.block_rows,
            knobs=knobs,
            batch=geom.batch,
            x_layout="KM",
            y_layout="NM",
        )
        func = func.with_attr(FLOPS_ATTR, 2 * geom.batch * hw * int(bsr.data.size))
        gv = self.builder_.add_func(func, _func_name(plan.kernel))
        y = self._emit(
            relax.call_tir(
                gv,
                [cols, relax.const(bsr.data), relax.const(bsr.indices), relax.const(bsr.indptr)],
                out_ty=relax.TensorType((geom.batch, n, hw), "float32"),
            ),
            "sparse",
        )
        return relax.op.reshape(y, out_shape)

    def _cuda_matmul(self, x, out_shape, weight: np.ndarray, m: int, plan: _Plan) -> relax.Expr:
        n, k = weight.shape
        x3 = self._emit(relax.op.reshape(x, (1, m, k)), "x3d")
        if plan.nm is not None:
            mat = to_nm(weight, plan.nm)
            func = cuda_nm_matmul(m, k, n, plan.nm, mat.values.shape[0], knobs=self.cuda_knobs)
            stored = int(mat.values.size)
            args = [x3, relax.const(mat.values), relax.const(nm_group_offsets(mat))]
        else:
            bsr = _nonempty_bsr(weight, plan.block, 1)
            func = cuda_bsr_matmul(
                m, k, n, plan.block, bsr.nnzb, bsr.block_rows, knobs=self.cuda_knobs
            )
            stored = int(bsr.data.size)
            args = [x3, relax.const(bsr.data), relax.const(bsr.indices), relax.const(bsr.indptr)]
        gv = self.builder_.add_func(
            func.with_attr(FLOPS_ATTR, 2 * m * stored), _func_name(plan.kernel)
        )
        y = self._emit(
            relax.call_tir(gv, args, out_ty=relax.TensorType((1, m, n), "float32")), "sparse"
        )
        return relax.op.reshape(y, out_shape)

    def _cuda_pointwise_conv2d(self, x, x_shape, out_shape, weight: np.ndarray, plan: _Plan):
        n, k = weight.shape
        batch, _, height, width = x_shape
        hw = height * width
        cols = self._emit(relax.op.reshape(x, (batch, k, hw)), "cols")
        bsr = _nonempty_bsr(weight, plan.block, 1)
        func = cuda_bsr_matmul(
            hw,
            k,
            n,
            plan.block,
            bsr.nnzb,
            bsr.block_rows,
            knobs=self.cuda_knobs,
            batch=batch,
            x_layout="KM",
            y_layout="NM",
        )
        func = func.with_attr(FLOPS_ATTR, 2 * batch * hw * int(bsr.data.size))
        gv = self.builder_.add_func(func, _func_name(plan.kernel))
        args = [cols, relax.const(bsr.data), relax.const(bsr.indices), relax.const(bsr.indptr)]
        y = self._emit(
            relax.call_tir(gv, args, out_ty=relax.TensorType((batch, n, hw), "float32")), "sparse"
        )
        return relax.op.reshape(y, out_shape)


def _func_name(kernel: str) -> str:
    """``bsr_matmul[16x1]`` -> ``bsr_matmul_16x1`` (a valid global symbol)."""
    return kernel.replace("[", "_").replace("]", "").replace(":", "_")


def _nonempty_bsr(weight: np.ndarray, block: tuple[int, int], row_multiple: int):
    bsr = to_bsr(weight, block, row_multiple=row_multiple)
    if bsr.nnzb:
        return bsr
    # An all-zero weight: one explicit zero block keeps every buffer non-empty.
    padded = np.zeros_like(weight)
    padded_bsr = to_bsr(padded, block, row_multiple=row_multiple)
    data = np.zeros((1, *block), dtype=weight.dtype)
    indptr = padded_bsr.indptr.copy()
    indptr[1:] = 1
    return type(bsr)(
        data=data,
        indices=np.zeros(1, "int32"),
        indptr=indptr,
        shape=bsr.shape,
        block=bsr.block,
    )


# -- CUDA -------------------------------------------------------------------------------------
# No GPU has calibrated the CUDA kernels yet, so the cost model is replaced by a fixed rule,
# conservative on purpose: go sparse only where work and weight traffic shrink by far more than
# the sparse kernels could plausibly lose against dlight's dense GPU schedules.

_GPU_RULE = "uncalibrated GPU rule"
#: BSR only for blocks of at least this many rows (a thread reuses one activation load for each)
_GPU_MIN_BLOCK_ROWS = 8
#: ... holding at most this fraction of the blocks.
_GPU_MAX_BLOCK_DENSITY = 0.3
#: N:M patterns the compressed kernel takes in "auto" (halving or better, int8 offsets).
_GPU_NM = ((2, 4), (4, 8))
#: Blocks "auto" weighs besides the detected one (fits block patterns shifted off the grid).
_GPU_ROW_BLOCKS = ((16, 1), (8, 1))


def _block_density(weight: np.ndarray, block: tuple[int, int]) -> float:
    """Fraction of the ``block`` grid (over the real ``N x K``) holding a nonzero."""
    bsr = to_bsr(weight, block)
    n, k = weight.shape
    return bsr.nnzb / max(-(-n // block[0]) * -(-k // block[1]), 1)


def _decide_cuda(
    name: str, info: WeightSparsity, weight: np.ndarray, op: str, config: SparsityConfig
) -> _Plan:
    """The GPU rule: BSR for blocks of >= 8 rows at block density <= 0.3, else the N:M kernel
    for a matmul weight that conforms to 2:4 or 4:8, else dense. Config choices are honoured."""
    choice = config.choice_for(name)
    if choice.kind == "dense":
        return _Plan("dense", "dense", f"{_GPU_RULE}: dense requested by the sparsity config")
    if choice.kind == "bsr":
        block = choice.block or tuple(info.block_shape)
        pattern = _pattern_of(block, None)
        return _Plan(
            bsr_matmul_kernel_name(block),
            pattern,
            f"{_GPU_RULE}: {pattern} requested by the sparsity config (block density "
            f"{_block_density(weight, block):.2f})",
            block,
        )
    if choice.kind == "nm":
        wanted = tuple(choice.nm or info.nm or ())
        if op != "matmul":
            return _Plan(
                bsr_matmul_kernel_name((1, 1)),
                _pattern_of((1, 1), None),
                f"{_GPU_RULE}: N:M requested by the sparsity config; a convolution runs it "
                "through the 1x1 BSR kernel",
                (1, 1),
            )
        if not wanted or not _conforms(weight, wanted):
            return _Plan(
                "dense",
                "dense",
                f"{_GPU_RULE}: N:M requested but the weight is not {wanted or 'N:M'} sparse",
            )
        return _Plan(
            nm_matmul_kernel_name(wanted),
            _pattern_of(None, wanted),
            f"{_GPU_RULE}: {wanted[0]}:{wanted[1]} requested by the sparsity config",
            None,
            wanted,
        )
    # "auto": the detected block if tall enough, and the row blocks patterns shifted off the
    # grid still fit; the one storing fewest blocks wins.
    blocks = {tuple(info.block_shape), *_GPU_ROW_BLOCKS}
    tall = [b for b in blocks if b[0] >= _GPU_MIN_BLOCK_ROWS]
    # ties go to the larger block: more FMAs per activation load, fewer indices
    density, _, block = min((_block_density(weight, b), (-b[0], -b[1]), b) for b in tall)
    where = f"block density {density:.2f} in {block[0]}x{block[1]} blocks"
    if density <= _GPU_MAX_BLOCK_DENSITY:
        return _Plan(
            bsr_matmul_kernel_name(block),
            _pattern_of(block, None),
            f"{_GPU_RULE}: {where} (>= {_GPU_MIN_BLOCK_ROWS} rows, <= "
            f"{_GPU_MAX_BLOCK_DENSITY}): BSR kernel",
            block,
        )
    nm = tuple(info.nm) if info.nm else None
    if op == "matmul" and nm in _GPU_NM:
        return _Plan(
            nm_matmul_kernel_name(nm),
            _pattern_of(None, nm),
            f"{_GPU_RULE}: {where} too dense for BSR; conforms to {nm[0]}:{nm[1]}: "
            "compressed N:M kernel",
            None,
            nm,
        )
    why_not_nm = "not 2:4 or 4:8" if op == "matmul" else "N:M is for matmuls"
    return _Plan(
        "dense",
        "dense",
        f"{_GPU_RULE}: {where} (BSR needs <= {_GPU_MAX_BLOCK_DENSITY}), {why_not_nm}: dense",
    )
