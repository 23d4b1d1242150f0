"""``tvm_sparse.compile``: import a model, run the tvm_sparse pipeline, build for a target."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import tvm

from .compiled_model import CompiledModel, use_all_cores
from .frontend import import_model
from .gpu_resources import GPU_RESOURCES_ENV, add_gpu_resources
from .layer_timing import LayerTimer
from .measure import calibrate_on_first_use
from .pipeline import pipeline
from .report import CompileReport
from .runtime import ThreadConfig
from .runtime.runner import Runner
from .targets import TargetPreset, check_compute_dtype, is_host_target, resolve_target
from .targets.backend import CUDA, backend_of
from .timing import compare

__all__ = ["compile"]

_SPARSITY_MODES = ("auto", "off")

#: Set to ``0`` to turn the default speed check of pruned models off (the test suite does, so
#: that tests of the passes' decisions do not depend on timings).
VERIFY_SPEED_ENV = "TVM_SPARSE_VERIFY_SPEED"
#: Set to ``0`` to decide layers by the calibration table alone by default (the test suite
#: does, for the same reason).
MEASURE_LAYERS_ENV = "TVM_SPARSE_MEASURE_LAYERS"


def compile(  # noqa: A001  (the public name mirrors tvm.compile)
    model: Any,
    target: str | dict | tvm.target.Target | TargetPreset = "x86",
    *,
    example_inputs: Any = None,
    dynamic_shapes: Any = None,
    dynamic_batch: bool = False,
    sparsity: str | dict = "auto",
    device: tvm.runtime.Device | None = None,
    tuning_cache: Any = True,
    verify_speed: bool | None = None,
    fast_math: bool = True,
    threads: ThreadConfig | None = None,
    measure_layers: bool | None = None,
    rpc: Any = None,
    dtype: str = "float32",
) -> CompiledModel:
    """Compile ``model`` for ``target`` and return a callable :class:`CompiledModel`.

    Parameters
    ----------
    model : torch.nn.Module | torch.export.ExportedProgram | onnx.ModelProto | str | tvm.IRModule
        The model; a string or path names an ``.onnx`` file.
    target : str | dict | tvm.target.Target | TargetPreset
        A preset name (see ``tvm_sparse.targets.list_presets()``) or a TVM target.
    example_inputs : tuple of torch.Tensor, optional
        Required for a ``torch.nn.Module``.
    dynamic_shapes : optional
        ``torch.export`` dynamic shapes for a PyTorch model.
    dynamic_batch : bool
        Make the first dimension of every input dynamic.
    sparsity : "auto" | "off" | dict
        ``"auto"`` rewrites pruned layers to shrunk or sparse kernels where that is faster,
        ``"off"`` compiles the model dense, a dict gives per-layer choices.
    device : tvm.runtime.Device, optional
        Where to run; by default the target's device 0 on this machine.
    tuning_cache : bool | str | os.PathLike | TuningCache | None
        Records of :func:`tvm_sparse.autotune` to use; ``True`` (default) reads the default
        cache (``~/.cache/tvm_sparse/tuning``, or the one entered with ``with TuningCache``),
        ``None`` / ``False`` ignore tuning records. The report marks tuned ops ``(tuned)``.
    verify_speed : bool, optional
        Where the build uses sparse kernels, also build it with dense kernels in their place
        (shrunk channels stay), time both on this machine by the project's timing policy
        (:mod:`tvm_sparse.timing`: interleaved rounds, a 5% margin for the simpler build) and
        return the faster; where the dense kernels win, first try the build with only the
        layers whose evidence gave at least 1.5x on sparse kernels (misjudged small layers
        demoted, not every layer). The report's notes give the times. By default on where it can
        run: ``sparsity="auto"`` and a target this machine runs (``TVM_SPARSE_VERIFY_SPEED=0``
        turns the default off).
    fast_math : bool
        Compute ``exp``, ``erf`` and ``tanh`` (in softmax, GELU, sigmoid, SiLU) with vectorised
        polynomials of about 1e-7 relative error; ``False`` calls the C library, exactly
        rounded and several times slower.
    measure_layers : bool, optional
        Decide each pruned matmul and conv left to ``"auto"`` by building its candidate
        kernels alone and timing them on this machine (:mod:`tvm_sparse.layer_timing`; cached,
        so a second compile reads the times back), before the calibration table; where this
        machine has no calibration table yet, measure a quick one first
        (:func:`tvm_sparse.measure.calibrate_on_first_use`, with progress on stderr). By
        default on where the target runs here or ``rpc`` is given
        (``TVM_SPARSE_MEASURE_LAYERS=0`` turns the default off).
    rpc : tvm.rpc.RPCSession | str, optional
        Measure on the board behind this session, ``HOST:PORT`` (an RPC server) or
        ``HOST:PORT:KEY`` (a tracker) instead of this machine: each layer's candidates (and
        the quick calibration table, where the board has none) are built here, run there and
        timed by the board's clock, so a cross-compiled model is decided by its own device.
        Run the result there with ``compiled.to_remote(session)``.
    threads : ThreadConfig, optional
        How the CPU kernels use threads: by default one per available core, workers not
        pinned, so that latency holds when another process shares a core (see
        :class:`tvm_sparse.runtime.ThreadConfig`).
    dtype : "float32" | "float16" | "bfloat16"
        What the model computes in. ``"float16"`` (CUDA targets) runs matmuls and convs on
        fp16 operands with fp32 accumulation, and the elementwise ops between them in fp16;
        softmax, reductions and the sparse kernels stay fp32 (TVM's ``ToMixedPrecision``; the
        report gives each op's dtype). The model's inputs and outputs keep their dtypes, cast at
        the edges inside the module, so ``compiled(x_fp32)`` returns fp32. ``"bfloat16"`` the
        same, on CUDA architectures from sm_80 (Orin, not Xavier). CPU targets compute fp32.

    Returns
    -------
    CompiledModel
        Callable like the model; ``.report`` tells what was done to every op.
    """
    if isinstance(sparsity, str) and sparsity not in _SPARSITY_MODES:
        raise ValueError(
            f"sparsity={sparsity!r} is not valid: use 'auto', 'off' or a per-layer dict"
        )
    if not isinstance(sparsity, (str, dict)):
        raise TypeError(f"sparsity must be 'auto', 'off' or a dict, not {type(sparsity).__name__}")
    if threads is not None and not isinstance(threads, ThreadConfig):
        raise TypeError(
            f"threads must be a tvm_sparse.ThreadConfig (e.g. ThreadConfig(num_threads=2)), "
            f"not {type(threads).__name__}"
        )
    preset = resolve_target(target)
    check_compute_dtype(preset.tvm_target(), dtype)
    if is_host_target(preset.tvm_target()):
        # before the first parallel kernel runs (constant folding runs some at compile time)
        use_all_cores(preset.tvm_target())
    imported = import_model(
        model, example_inputs, dynamic_shapes=dynamic_shapes, dynamic_batch=dynamic_batch
    )

    runs_here = is_host_target(preset.tvm_target()) and (
        device is None or device.dlpack_device_type() == tvm.cpu().dlpack_device_type()
    )
    runner = Runner.connect(rpc, preset.cross_compiler) if rpc is not None else None
    for flag, value in (("verify_speed", verify_speed), ("measure_layers", measure_layers)):
        if value and not runs_here and not (flag == "measure_layers" and runner is not None):
            raise ValueError(
                f"{flag}=True times kernels on this machine, but target {preset.name!r} does "
                f"not run here; leave {flag} unset for cross-compilation"
                + (", or pass rpc= the board's session" if flag == "measure_layers" else "")
            )
    if measure_layers is None:
        measure_layers = (runs_here or runner is not None) and os.environ.get(
            MEASURE_LAYERS_ENV, "1"
        ) != "0"
    timer = None
    if measure_layers and sparsity != "off":
        timer = LayerTimer(preset.tvm_target(), runner=runner, fast_math=fast_math)
    calibrated = None
    if timer is not None:
        # the table ranks each layer's candidates and decides the layers left unmeasured
        start = time.perf_counter()
        calibrated = calibrate_on_first_use(preset.tvm_target(), rpc=runner)
        calibrated_s = time.perf_counter() - start

    def build(mode: str | dict) -> CompiledModel:
        report = CompileReport()
        start = time.perf_counter()
        executable = tvm.compile(
            imported.mod,
            preset.tvm_target(),
            relax_pipeline=pipeline(
                preset,
                sparsity=mode,
                report=report,
                tuning_cache=tuning_cache,
                fast_math=fast_math,
                layer_timer=timer,
                dtype=dtype,
            ),
        )
        report.notes.append(f"compiled in {time.perf_counter() - start:.1f} s")
        if calibrated is not None:
            report.notes.append(
                f"measured a calibration table for {timer.runner.name} in {calibrated_s:.0f} s "
                "(first use; cached, tvm_sparse.measure.calibrate measures the full grid)"
            )
        if timer is not None and timer.measured:
            report.notes.append(
                f"timed the candidates of {timer.measured} layer(s) on {timer.runner.name} in "
                f"{timer.spent_s:.1f} s (cached for the next compile)"
            )
        return CompiledModel(
            executable,
            preset=preset,
            inputs=imported.inputs,
            output_spec=imported.output_spec,
            report=report,
            device=device,
            threads=threads,
        )

    compiled = build(sparsity)
    if backend_of(preset.tvm_target()) is CUDA and os.environ.get(GPU_RESOURCES_ENV) != "0":
        add_gpu_resources(compiled)  # registers, spills, occupancy per kernel, from nvcc
    if verify_speed is None:
        verify_speed = (
            sparsity == "auto" and runs_here and os.environ.get(VERIFY_SPEED_ENV, "1") != "0"
        )
    if not verify_speed or not _sparse_kernel_rows(compiled.report):
        return compiled
    # The check weighs the sparse kernels only: the other builds keep the shrunk channels.
    inputs = _timing_inputs(imported.inputs, example_inputs)
    return _speed_checked(compiled, build, sparsity, inputs)


#: A sparse kernel whose evidence says less than this over dense is demoted first when the
#: speed check finds the model's sparse kernels not worth it.
STRONG_SPEEDUP = 1.5
#: Kernel names of the sparse kernels (``bsr_matmul[16x1]``, ``nm_matmul[2:4]``).
_SPARSE_KERNELS = ("bsr_", "nm_")


def _speed_checked(compiled: CompiledModel, build, sparsity: str | dict, inputs: list):
    """``compiled``, or a build with fewer sparse kernels where they do not pay.

    The build with every sparse kernel is timed against the one with dense kernels in their
    place (:func:`tvm_sparse.timing.compare`). Where it does not win, the layers whose evidence
    (measured times or the cost model) gave less than :data:`STRONG_SPEEDUP` go dense and the
    rest is checked again, so that misjudged small layers do not cost the others their
    kernels. Noted in the report of the build returned."""
    rows = _sparse_kernel_rows(compiled.report)
    shrunk = build(_demoted(sparsity, None))
    result = _check(compiled, shrunk, inputs)
    if result.winner == "sparse kernels":
        compiled.report.notes.append(
            f"speed check on this machine: {result.describe()}: kept the sparse kernels"
        )
        return compiled
    weak = [r.layer for r in rows if r.layer and r.speedup < STRONG_SPEEDUP]
    if weak and len(weak) < len(rows):
        strong = build(_demoted(sparsity, weak))
        again = _check(strong, shrunk, inputs)
        if again.winner == "sparse kernels":
            strong.report.notes.append(
                f"speed check on this machine: every sparse kernel {result.describe()}: not "
                f"faster by the margin, so the layers whose evidence gave less than "
                f"{STRONG_SPEEDUP}x run dense kernels ({', '.join(weak)}); the others "
                f"{again.describe()}: kept their sparse kernels"
            )
            return strong
        result = again
    shrunk.report.notes.append(
        f"speed check on this machine: {result.describe()}: the sparse kernels were not faster "
        "by more than the margin, so every layer runs a dense kernel (shrunk channels kept); "
        "the per-layer decisions of the sparse build were: "
        + "; ".join(f"{r.name}: {r.kernel} ({r.reason})" for r in rows)
    )
    return shrunk


def _check(pruned: CompiledModel, shrunk: CompiledModel, inputs: list):
    return compare(
        {"sparse kernels": lambda: pruned(*inputs), "dense kernels": lambda: shrunk(*inputs)},
        reference="dense kernels",
    )


def _sparse_kernel_rows(report: CompileReport) -> list:
    return [r for r in report.rows if r.kernel.startswith(_SPARSE_KERNELS)]


def _demoted(sparsity: str | dict, layers: list[str] | None) -> dict:
    """The same sparsity setting with ``layers`` (``None``: every layer) on a dense kernel;
    channel shrinking stays."""
    config = dict(sparsity) if isinstance(sparsity, dict) else {"*": sparsity}
    if layers is None:
        return {**{name: "dense" for name in config}, "*": "dense"}
    return {**config, **{name: "dense" for name in layers}}


def _timing_inputs(specs: list, example_inputs: Any) -> list[Any]:
    """The example inputs (``CompiledModel.benchmark`` takes torch or numpy), or made-up ones of
    the inputs' shapes (dynamic dims: 1): random floats, zeros for integers (indices in range)."""
    if example_inputs is not None:
        values = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        if len(values) == len(specs):
            return list(values)
    rng = np.random.default_rng(0)
    arrays = []
    for spec in specs:
        shape = [d if isinstance(d, int) else 1 for d in spec.shape]
        floating = np.issubdtype(np.dtype(spec.dtype), np.floating)
        arrays.append(
            rng.standard_normal(shape).astype(spec.dtype)
            if floating
            else np.zeros(shape, spec.dtype)
        )
    return arrays
