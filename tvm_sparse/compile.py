"""``tvm_sparse.compile``: import a model, run the tvm_sparse pipeline, build for a target."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import tvm

from .benchmarking import interleave
from .compiled_model import CompiledModel, use_all_cores
from .frontend import import_model
from .pipeline import pipeline
from .report import CompileReport
from .targets import TargetPreset, is_host_target, resolve_target

__all__ = ["compile"]

_SPARSITY_MODES = ("auto", "off")

#: Set to ``0`` to turn the default speed check of pruned models off (the test suite does, so
#: that tests of the passes' decisions do not depend on timings).
VERIFY_SPEED_ENV = "TVM_SPARSE_VERIFY_SPEED"


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
        Also build the model dense, time both builds on this machine and return the faster,
        so that a pruned model never comes out slower than its dense build (the per-layer
        cost model can misjudge small layers). The report's notes give both times. By default
        on where it can run and matters: ``sparsity="auto"``, a target this machine runs, and
        a model in which pruning was found (``TVM_SPARSE_VERIFY_SPEED=0`` turns the default
        off).
    fast_math : bool
        Compute ``exp``, ``erf`` and ``tanh`` (in softmax, GELU, sigmoid, SiLU) with vectorised
        polynomials of about 1e-7 relative error; ``False`` calls the C library, exactly
        rounded and several times slower.

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
    preset = resolve_target(target)
    if is_host_target(preset.tvm_target()):
        # before the first parallel kernel runs (constant folding runs some at compile time)
        use_all_cores(preset.tvm_target())
    imported = import_model(
        model, example_inputs, dynamic_shapes=dynamic_shapes, dynamic_batch=dynamic_batch
    )

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
            ),
        )
        report.notes.append(f"compiled in {time.perf_counter() - start:.1f} s")
        return CompiledModel(
            executable,
            preset=preset,
            inputs=imported.inputs,
            output_spec=imported.output_spec,
            report=report,
            device=device,
        )

    runs_here = is_host_target(preset.tvm_target()) and (
        device is None or device.dlpack_device_type() == tvm.cpu().dlpack_device_type()
    )
    if verify_speed and not runs_here:
        raise ValueError(
            f"verify_speed=True times the builds on this machine, but target {preset.name!r} "
            "does not run here; leave verify_speed unset for cross-compilation"
        )
    compiled = build(sparsity)
    if verify_speed is None:
        verify_speed = (
            sparsity == "auto"
            and runs_here
            and os.environ.get(VERIFY_SPEED_ENV, "1") != "0"
            and any(row.pattern != "dense" for row in compiled.report.rows)
        )
    if not verify_speed:
        return compiled
    return _faster_build(compiled, build("off"), _timing_inputs(imported.inputs, example_inputs))


#: Interleaved rounds (sparse, dense, sparse, ...) and calls per round of the speed check.
_VERIFY_ROUNDS, _VERIFY_REPEAT = 3, 10


def _faster_build(pruned: CompiledModel, dense: CompiledModel, inputs: list) -> CompiledModel:
    """The faster of two builds of one model, timed in turns on this machine; noted in the
    report of the one returned."""
    ms = interleave(
        {
            "pruned": lambda: pruned.benchmark(*inputs, repeat=_VERIFY_REPEAT),
            "dense": lambda: dense.benchmark(*inputs, repeat=_VERIFY_REPEAT),
        },
        rounds=_VERIFY_ROUNDS,
        settle_between=False,  # one thread pool: nothing of another runtime to wait for
    )
    pruned_ms, dense_ms = ms["pruned"], ms["dense"]
    measured = f"speed check on this machine: pruned build {pruned_ms:.3f} ms, dense build "
    if pruned_ms <= dense_ms:
        pruned.report.notes.append(f"{measured}{dense_ms:.3f} ms: kept the pruned build")
        return pruned
    dense.report.notes.append(
        f"{measured}{dense_ms:.3f} ms: the pruned build was slower, returned the dense build "
        "(sparsity='off'); the per-layer decisions of the pruned build were: "
        + "; ".join(f"{r.name}: {r.kernel} ({r.reason})" for r in pruned.report.rows if r.reason)
    )
    return dense


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
