"""Which kernel a pruned CPU layer runs, and why: the sparsity config a user gives, the cost
model's estimate, and a measurement of the layer's candidates on this machine (GPU targets:
:mod:`.gpu_sparse_rule`). :class:`~tvm_sparse.passes.RewriteToSparse` asks
:class:`CPUDecisions` for every layer and builds what the returned :class:`Plan` names.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tvm.target import Target

from ..kernels.bsr_matmul import bsr_matmul_kernel_name
from ..kernels.cost_model import Calibration
from ..kernels.formats import to_bsr, to_nm
from ..kernels.nm_matmul import nm_matmul_kernel_name
from ..kernels.nm_permute import nm_permute_applies
from ..kernels.sparse_conv2d import Conv2DGeometry
from ..kernels.winograd_conv2d import winograd_applies
from ..targets.backend import backend_of
from ..targets.facts import vector_lanes
from .detect_sparsity import WeightSparsity
from .sparsity_config import NM_VARIANTS, SparsityConfig

__all__ = ["CPUDecisions", "Plan", "TableCheck", "decide", "measured"]


#: Effective bandwidth of im2col's copy for the cost model: half the memory bandwidth that
#: benchmarks/roofline.py measures, since its reads are strided. Measured layers do not use it.
IM2COL_BYTES_PER_S = 13.7e9

#: How much faster a dense conv runs as ``winograd_conv2d`` (``RewriteToWinograd``) than the
#: dense rate the calibration measures: a little under its 2.25x fewer multiplies, for the
#: transforms. Measured layers time the Winograd build itself.
WINOGRAD_SPEEDUP = 2.2

#: Block shapes ``"auto"`` always weighs besides the detected one: the vector-friendly rows.
_ROW_BLOCKS = ((16, 1), (8, 1))


@dataclass(frozen=True)
class Plan:
    kernel: str  # "dense" or a kernel name
    pattern: str
    reason: str
    block: tuple[int, int] | None = None
    nm: tuple[int, int] | None = None
    #: how much faster than dense the evidence says the kernel is (0: no figure)
    speedup: float = 0.0
    #: which of the target's N:M kernels (``NM_VARIANTS``); ``None``: the target's default
    variant: str | None = None

    def record(self) -> dict[str, str]:
        record = {"kernel": self.kernel, "pattern": self.pattern, "reason": self.reason}
        if self.speedup > 0:
            record["speedup"] = f"{self.speedup:.4g}"
        if self.variant:
            record["variant"] = self.variant
        return record


def pattern_of(block: tuple[int, int] | None, nm: tuple[int, int] | None) -> str:
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


def runs_as_winograd(geom: Conv2DGeometry, out_channels: int, target: Target) -> bool:
    """Whether the dense form of this conv would be a ``winograd_conv2d`` on ``target``."""
    backend = backend_of(target, allow_none=True)
    if backend is None or not backend.winograd:
        return False
    in_shape = (geom.batch, geom.height, geom.width, geom.channels)
    weight_shape = (*geom.kernel, geom.channels, out_channels)
    why = winograd_applies(
        in_shape, weight_shape, vector_lanes(target), strides=geom.strides,
        padding=geom.padding, dilation=geom.dilation,
    )  # fmt: skip
    return why is None


def decide(
    name: str,
    info: WeightSparsity,
    weight: np.ndarray,
    op: str,
    m: int,
    config: SparsityConfig,
    calibration: Calibration,
    overhead_s: float = 0.0,
    dense_speedup: float = 1.0,
) -> Plan:
    """Choose the kernel for one layer; ``overhead_s`` is time the sparse path adds (im2col),
    ``dense_speedup`` how much faster than the calibrated rate the dense kernel runs."""
    choice = config.choice_for(name)
    n, k = info.shape
    density = info.density
    if choice.kind == "dense":
        return Plan("dense", "dense", "dense requested by the sparsity config")
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
        elif wanted is not None and (choice.nm is None or conforms_to_nm(weight, wanted)):
            options.append((None, tuple(wanted)))
        elif choice.kind == "nm":
            return Plan(
                "dense", "dense", f"N:M requested but the weight is not {wanted or 'N:M'} sparse"
            )
    forced = choice.kind != "auto"
    ranked = _ranked(options, info, weight, m, calibration, overhead_s, dense_speedup)
    if not ranked:
        return Plan("dense", "dense", f"density {density:.2f}: no sparse kernel fits")
    est, kernel, block, nm = ranked[0]
    pattern = pattern_of(block, nm)
    where = f"in {block[0]}x{block[1]} blocks" if nm is None else f"as {nm[0]}:{nm[1]}"
    variant = choice.variant if nm is not None else None
    if variant:
        where += f" ({variant})"
    if nm is None and info.nm:
        where += f" (conforms to {info.nm[0]}:{info.nm[1]})"
    if forced:
        return Plan(
            kernel,
            pattern,
            f"{pattern} requested by the sparsity config (density {density:.2f} {where}: "
            f"est. {est.speedup:.1f}x of dense; {calibration.evidence})",
            block,
            nm,
            est.speedup,
            variant,
        )
    if density == 0.0 or est.speedup >= config.min_speedup:
        return Plan(
            kernel,
            pattern,
            f"density {density:.2f} {where}: est. {est.speedup:.1f}x faster than dense "
            f"({calibration.evidence})",
            block,
            nm,
            est.speedup,
        )
    if est.sparse_s == float("inf"):
        return Plan(
            "dense",
            "dense",
            f"density {density:.2f} {where}: denser than any calibrated sparse kernel, kept dense "
            f"({calibration.evidence})",
        )
    return Plan(
        "dense",
        "dense",
        f"density {density:.2f} {where}: sparse est. {est.speedup:.1f}x of dense, kept dense "
        f"({calibration.evidence})",
    )


def _ranked(options, info, weight, m, calibration, overhead_s, dense_speedup) -> list[tuple]:
    """``(estimate, kernel, block, nm)`` of each option the table knows, fastest first."""
    n, k = info.shape
    ranked = []
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
        ranked.append((est, kernel, block, nm))
    return sorted(ranked, key=lambda r: r[0].sparse_s)


#: Sparse candidates of a layer that are built and timed, the table's fastest first.
_MEASURED_CANDIDATES = 2


def _choice_of(
    block: tuple[int, int] | None, nm: tuple[int, int] | None, variant: str | None = None
) -> str:
    """The sparsity-config choice that builds exactly this kernel."""
    if nm is not None:
        return f"nm:{nm[0]}:{nm[1]}" + (f":{variant}" if variant else "")
    return "unstructured" if block == (1, 1) else f"bsr:{block[0]}x{block[1]}"


@dataclass
class TableCheck:
    """How far the calibration table's speedups were from the layers measured in one compile.

    Once the measuring budget is spent, the table decides the remaining layers; a table measured
    in another state of the machine (or on another host of its class) errs the same way on
    every layer of a kind, so its estimate is scaled by the median of measured over estimated
    speedup of the layers of the same kind already measured: the same op (a single row, M = 1,
    a kind of its own: the table measures it apart) and kernel, else the same op.
    """

    ratios: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def add(self, op: str, choice: str, estimated: float, measured: float) -> None:
        if estimated > 0 and math.isfinite(estimated) and measured > 0:
            self.ratios.setdefault((op, choice), []).append(measured / estimated)

    def factor(self, op: str, choice: str) -> tuple[float, int] | None:
        """``(median ratio, measurements it comes from)``, or ``None`` without any."""
        for wanted in (choice, None):
            found = [r for (o, c), rs in self.ratios.items() for r in rs
                     if o == op and wanted in (None, c)]  # fmt: skip
            if found:
                return float(np.median(found)), len(found)
        return None


def measured(
    plan: Plan, info: WeightSparsity, weight: np.ndarray, m: int,
    calibration: Calibration, timer: Any, measure, *, op: str = "matmul",
    check: TableCheck | None = None, min_speedup: float = 1.1, nm_variants: tuple[str, ...] = (),
) -> Plan:  # fmt: skip
    """The table's ``plan`` for an ``"auto"`` layer, replaced by what timing the layer's
    candidates on this machine found (``measure(choices)``, a :class:`LayerTimer` method).
    Where they could not be timed, the table's plan, scaled by ``check`` (what the layers
    measured before found of the table) where it has evidence, with the reason why.

    ``nm_variants``: the target's N:M kernels, each timed where the table picks N:M (the table
    rates N:M as one kernel; which is faster depends on the layer's shape and the core)."""
    options = [(block, None) for block in dict.fromkeys(
        [tuple(info.block_shape), (1, 1), *_ROW_BLOCKS])]  # fmt: skip
    if info.nm is not None and op == "matmul":  # a conv runs N:M weights as 1x1 blocks
        options.append((None, tuple(info.nm)))
    ranked = [r for r in _ranked(options, info, weight, m, calibration, 0.0, 1.0)
              if math.isfinite(r[0].sparse_s)]  # fmt: skip
    if not ranked:
        return plan
    picked = {}
    for est, kernel, block, nm in ranked[:_MEASURED_CANDIDATES]:
        for variant in (nm_variants or (None,)) if nm is not None else (None,):
            picked[_choice_of(block, nm, variant)] = (est, kernel, block, nm, variant)
    timing = measure(list(picked))
    density = f"density {info.density:.2f}"
    kind = op if m > 1 else f"{op}, one row"
    if timing is None:
        why = "measuring budget spent" if timer.exhausted else "could not be timed"
        why = f"{why} on {timer.runner.name}"
        return _scaled(plan, ranked, check, kind, density, why, min_speedup)
    if check is not None:
        # the table rates N:M as one kernel: it is checked once, against the faster variant
        best: dict[str, tuple[float, float]] = {}
        for choice, (est, _, block, nm, _) in picked.items():
            rated, speedup = _choice_of(block, nm), timing.ms["dense"] / timing.ms[choice]
            best[rated] = (est.speedup, max(speedup, best.get(rated, (0.0, 0.0))[1]))
        for rated, (estimated, speedup) in best.items():
            check.add(kind, rated, estimated, speedup)
    if timing.winner == "dense":
        return Plan("dense", "dense", f"{density}: no sparse kernel faster than dense by the "
                     f"margin, {timing.describe()}")  # fmt: skip
    _, kernel, block, nm, variant = picked[timing.winner]
    return Plan(kernel, pattern_of(block, nm),
                f"{density}: fastest as {timing.winner}, {timing.describe()}",
                block, nm, timing.ms["dense"] / timing.ms[timing.winner], variant)  # fmt: skip


def _scaled(plan, ranked, check, op, density, why, min_speedup) -> Plan:
    """The table's ranking scaled by ``check``; ``plan`` (with ``why``) without evidence."""
    scaled = []
    for est, kernel, block, nm in ranked:
        factor = check.factor(op, _choice_of(block, nm)) if check is not None else None
        if factor is not None:
            scaled.append((est.speedup * factor[0], est.speedup, factor[1], kernel, block, nm))
    if not scaled:
        return dataclasses.replace(plan, reason=f"{plan.reason}; {why}")
    speedup, table, count, kernel, block, nm = max(scaled, key=lambda s: s[0])
    pattern = pattern_of(block, nm)
    evidence = (f"{why}: table est. {table:.2f}x for {pattern}, {speedup:.2f}x scaled by "
                f"{count} candidate{'s' * (count != 1)} measured in this compile")  # fmt: skip
    if speedup >= min_speedup:
        return Plan(kernel, pattern, f"{density}: {evidence}", block, nm, speedup)
    return Plan("dense", "dense", f"{density}: {evidence}, kept dense")


def conforms_to_nm(weight: np.ndarray, nm: tuple[int, int]) -> bool:
    try:
        to_nm(weight, nm)
    except ValueError:
        return False
    return True


class CPUDecisions:
    """The CPU chooser of :class:`~tvm_sparse.passes.RewriteToSparse`: per layer, the table's
    plan (:func:`decide`), replaced by timing the candidates where a ``layer_timer`` is given
    and the layer is ``"auto"`` (:func:`measured`)."""

    def __init__(
        self, target: Target, config: SparsityConfig, calibration: Calibration, layer_timer: Any
    ) -> None:
        self.target = target
        self.config = config
        self.calibration = calibration
        self.layer_timer = layer_timer
        self.check = TableCheck()  # the table against the layers measured in this compile

    def _nm_variants(self, info: WeightSparsity, weight: np.ndarray) -> tuple[str, ...]:
        """The N:M kernels a layer can run as, where there is more than one to time."""
        if info.nm is None or not nm_permute_applies(self.target, tuple(info.nm), weight.shape[1]):
            return ()
        return NM_VARIANTS

    def _measures(self, name: str) -> bool:
        return self.layer_timer is not None and self.config.choice_for(name).kind == "auto"

    def matmul(
        self, name: str, info: WeightSparsity, weight: np.ndarray, m: int, epilogue_ops=()
    ) -> Plan:
        """The plan of a matmul of ``m`` rows (leading batch dims folded in), timed with the
        bias add and activation ``epilogue_ops`` that follow it."""
        plan = decide(name, info, weight, "matmul", m, self.config, self.calibration)
        if plan.variant == "permute" and not nm_permute_applies(
            self.target, plan.nm, weight.shape[1]
        ):
            plan = dataclasses.replace(plan, variant="gather", reason=(
                f"{plan.reason}; the permute kernel needs x86 vectors and whole groups of "
                f"{plan.nm[1]} inputs: gather"))  # fmt: skip
        if self._measures(name):
            timer = self.layer_timer
            measure = lambda c: timer.matmul((m, weight.shape[1]), weight, c, epilogue_ops)  # noqa: E731
            plan = measured(plan, info, weight, m, self.calibration, timer, measure,
                            check=self.check, min_speedup=self.config.min_speedup,
                            nm_variants=self._nm_variants(info, weight))  # fmt: skip
        return plan

    def conv2d(
        self, name: str, info: WeightSparsity, weight: np.ndarray, geom: Conv2DGeometry
    ) -> Plan:
        """The plan of an NCHW conv, its weight flattened to ``(O, I*KH*KW)``."""
        oh, ow = geom.out_hw
        # im2col writes and the kernel reads a (K, OH*OW) copy of each image; the calibration
        # (matmuls) does not include that traffic.
        # The kernel runs image by image, so its rate is the one for M = OH*OW rows.
        copy_bytes = 0 if geom.is_pointwise else 8 * weight.shape[1] * oh * ow
        winograd = runs_as_winograd(geom, weight.shape[0], self.target)
        plan = decide(
            name, info, weight, "conv2d", oh * ow, self.config, self.calibration,
            overhead_s=copy_bytes / IM2COL_BYTES_PER_S,
            dense_speedup=WINOGRAD_SPEEDUP if winograd else 1.0,
        )  # fmt: skip
        if self._measures(name):
            timer = self.layer_timer
            x_shape = (geom.batch, geom.channels, geom.height, geom.width)
            oihw = weight.reshape(weight.shape[0], geom.channels, *geom.kernel)
            measure = lambda c: timer.conv2d(  # noqa: E731
                x_shape, oihw, strides=geom.strides, padding=geom.padding,
                dilation=geom.dilation, candidates=c,
            )  # fmt: skip
            plan = measured(
                plan, info, weight, oh * ow, self.calibration, timer, measure, op="conv2d",
                check=self.check, min_speedup=self.config.min_speedup,
            )  # fmt: skip
        return plan
