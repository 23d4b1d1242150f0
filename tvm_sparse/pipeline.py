"""The tvm_sparse Relax pipeline: sparsity passes, legalization, per-target schedules, lowering.

``tvm_sparse.pipeline(target)`` is a pass usable as ``tvm.compile(mod, target,
relax_pipeline=tvm_sparse.pipeline(target))``, so the project's stages drop into any TVM flow.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic_pipeline
from tvm.relax.backend.cuda import pipeline as cuda_pipeline
from tvm.target import Target

from .passes.collect_report import (
    CollectComputeDtypes,
    CollectFusionGroups,
    CollectKernelReport,
    CollectOpReport,
)
from .passes.convert_compute_dtype import ConvertComputeDtype
from .passes.convert_to_nhwc import ConvertToNHWC
from .passes.fold_channel_scale import FoldChannelScale
from .passes.fold_constants_on_host import FoldConstantsOnHost
from .passes.inject_prefetch import InjectPrefetch
from .passes.pack_weights import PackWeights
from .passes.pad_attention_tokens import PadAttentionTokens
from .passes.reorder_reshape_after_elementwise import ReorderReshapeAfterElementwise
from .passes.rewrite_constant_take import RewriteConstantTake
from .passes.rewrite_to_winograd import RewriteToWinograd
from .passes.uniquify_binding_names import UniquifyBindingNames
from .passes.use_fast_math import UseFastMath
from .report import CompileReport
from .schedules import ApplySchedules, schedule_rules
from .targets import TargetPreset, resolve_target
from .targets.backend import backend_of, check_compute_dtype
from .targets.facts import vector_lanes

__all__ = [
    "compute_dtype_passes",
    "pipeline",
    "prepare_passes",
    "schedule_input_passes",
    "sparsity_passes",
]


def prepare_passes() -> list[tvm.transform.Pass]:
    """Bring imported models to inference form with constant weights the detectors can read."""
    return [
        # batch norm after a conv becomes its weight scale and a bias add, which fuses with the
        # activation and residual add that follow (decomposed, it left them out of the conv)
        relax.transform.FoldBatchnormToConv2D(),
        relax.transform.DecomposeOpsForInference(),
        FoldConstantsOnHost(),  # most of it, without building a kernel per op
        relax.transform.FoldConstant(),
        FoldChannelScale(),
        RewriteConstantTake(),
        UniquifyBindingNames(),
    ]


def sparsity_passes(
    target: Target,
    sparsity: Any = "auto",
    layer_timer: Any = None,
    dtype: str = "float32",
    fast_math: bool = False,
) -> list[tvm.transform.Pass]:
    """Detect pruned patterns, shrink zero channels, rewrite sparse weights to sparse kernels
    (timing each layer's candidates with ``layer_timer`` where one is given) for a model that
    will compute in ``dtype``, with ``UseFastMath`` where ``fast_math``."""
    if sparsity == "off":
        return []
    from .passes import DetectSparsity, RewriteToSparse, ShrinkPrunedChannels

    multiple = backend_of(target).channel_multiple(target)
    return [
        DetectSparsity(),
        ShrinkPrunedChannels(channel_multiple=multiple, layer_timer=layer_timer),
        relax.transform.FoldConstant(),
        DetectSparsity(),
        RewriteToSparse(
            target, sparsity=sparsity, layer_timer=layer_timer, dtype=dtype, fast_math=fast_math
        ),  # fmt: skip
    ]


def compute_dtype_passes(
    dtype: str, report: CompileReport | None = None
) -> list[tvm.transform.Pass]:
    """Convert the model's compute to ``dtype`` (:class:`ConvertComputeDtype`), then record
    each report row's dtype.

    They run after the sparsity passes and the report's op rows: ``DetectSparsity`` and
    ``ShrinkPrunedChannels`` read the fp32 weights (a weight behind an ``astype`` is no longer
    a constant they can read), and ``RewriteToSparse`` emits its fp32 kernels as ``call_tir``,
    which ``ToMixedPrecision`` keeps fp32 with casts at its edges. They run before
    legalization, since ``ToMixedPrecision`` rewrites Relax ops, not TIR.
    """
    convert = [ConvertComputeDtype(dtype)] if dtype != "float32" else []
    return convert + ([CollectComputeDtypes(report)] if report is not None else [])


def _tuning_passes(
    target: Target, tuning_cache: Any, report: CompileReport, fusion: CollectFusionGroups
) -> list[tvm.transform.Pass]:
    """Apply tuned records before ``ApplySchedules``, mark the tuned ops in the report after."""
    from .tune.cache import resolve_cache

    cache = resolve_cache(tuning_cache, target)
    if cache is None:
        return []
    from .tune.apply_tuning_records import ApplyTuningRecords

    apply = ApplyTuningRecords(cache, report=report)
    return [apply, apply.mark_report(fusion)]


def _cpu_passes(target: Target, layer_timer: Any, winograd: bool) -> list[tvm.transform.Pass]:
    passes = [PadAttentionTokens(vector_lanes(target)), ConvertToNHWC()]
    if winograd:
        passes.append(RewriteToWinograd(target, layer_timer=layer_timer))
    return passes


def _lowering(backend: Any) -> Any:
    return lambda target: backend.dataflow_lower_passes(target) + backend.finalize_passes(target)


#: Each target family's passes after the sparsity passes, and TVM's lowering for it.
_FAMILY_PASSES = {"cpu": _cpu_passes, "cuda": lambda _target, _timer, _winograd: []}
_LOWERING = {"cpu": _lowering(cpu_generic_pipeline), "cuda": _lowering(cuda_pipeline)}


def schedule_input_passes(
    target: Target,
    sparsity: Any,
    report: CompileReport,
    fusion: CollectFusionGroups,
    *,
    fast_math: bool = True,
    layer_timer: Any = None,
    winograd: bool = True,
    dtype: str = "float32",
) -> list[tvm.transform.Pass]:
    """Everything before scheduling: the PrimFuncs these leave are what schedules (and the
    autotuner) see."""
    return (
        prepare_passes()
        + sparsity_passes(target, sparsity, layer_timer, dtype, fast_math)
        + _FAMILY_PASSES[backend_of(target).family](target, layer_timer, winograd)
        + [ReorderReshapeAfterElementwise(), CollectOpReport(report)]
        + compute_dtype_passes(dtype, report)
        + [
            *([UseFastMath()] if fast_math else []),
            FoldConstantsOnHost(),
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            fusion,
            relax.transform.FuseOps(),
            fusion,
            relax.transform.FuseTIR(),
            relax.transform.DeadCodeElimination(),
        ]
    )


def pipeline(
    target: str | dict | Target | TargetPreset = "x86",
    *,
    sparsity: Any = "auto",
    report: CompileReport | None = None,
    tuning_cache: Any = True,
    fast_math: bool = True,
    layer_timer: Any = None,
    winograd: bool = True,
    dtype: str = "float32",
) -> tvm.transform.Pass:
    """The project's Relax pipeline for ``target``.

    Parameters
    ----------
    target : str | dict | tvm.target.Target | TargetPreset
        A preset name (``tvm_sparse.targets.list_presets()``) or a TVM target.
    sparsity : "auto" | "off" | dict
        ``"auto"`` rewrites a layer to a sparse or shrunk kernel where that is faster,
        ``"off"`` compiles dense; a dict gives per-layer choices (see ``RewriteToSparse``).
    report : CompileReport, optional
        Filled with one row per operator as the pipeline runs.
    tuning_cache : bool | str | os.PathLike | TuningCache | None
        Records of :func:`tvm_sparse.autotune` to apply before the default schedules. ``True``
        (default): the cache entered with ``with TuningCache(...)``, else the default directory
        ``~/.cache/tvm_sparse/tuning``; a directory or ``.jsonl`` path; ``None`` / ``False``: off.
    fast_math : bool
        Compute ``exp``, ``erf``, ``tanh`` (softmax, GELU, sigmoid, SiLU) with vectorised
        polynomials (:class:`~tvm_sparse.passes.UseFastMath`, about 1e-7 relative error)
        instead of C library calls.
    layer_timer : tvm_sparse.layer_timing.LayerTimer, optional
        Decide each ``"auto"`` matmul and conv, and whether each 3x3 conv runs as Winograd,
        by timing the candidates on this machine (the target must run here); without one the
        calibration table and stated rules decide.
    winograd : bool
        Let ``RewriteToWinograd`` run 3x3 stride-1 convs as Winograd kernels (CPU targets).
    dtype : "float32" | "float16" | "bfloat16"
        The compute dtype (:func:`compute_dtype_passes`): fp16 or bf16 operands with fp32
        accumulation in matmuls and convs; the module's inputs and outputs keep their dtypes.
        CUDA targets only (bf16 from sm_80); CPU targets compute fp32.

    Returns
    -------
    tvm.transform.Pass
        Use as ``tvm.compile(mod, target, relax_pipeline=...)``.
    """
    preset = resolve_target(target)
    tvm_target = preset.tvm_target()
    check_compute_dtype(tvm_target, dtype)
    report = report if report is not None else CompileReport()
    report.target = preset.name if preset.name != "custom" else str(tvm_target)
    report.dtype = dtype
    fusion = CollectFusionGroups(report)
    tuned = _tuning_passes(tvm_target, tuning_cache, report, fusion)
    passes = (
        schedule_input_passes(
            tvm_target,
            sparsity,
            report,
            fusion,
            fast_math=fast_math,
            layer_timer=layer_timer,
            winograd=winograd,
            dtype=dtype,
        )  # fmt: skip
        + tuned[:1]
        + [ApplySchedules(schedule_rules(tvm_target)), CollectKernelReport(report, fusion)]
        + tuned[1:]
        + [PackWeights(), InjectPrefetch()]  # after the reports: splitting renames the kernels
        + _LOWERING[backend_of(tvm_target).family](tvm_target)
    )

    @tvm.transform.module_pass(opt_level=0, name="tvm_sparse.pipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with tvm_target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline
