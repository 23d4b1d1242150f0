"""``tvm_sparse.compile``: import a model, run the tvm_sparse pipeline, build for a target."""

from __future__ import annotations

import time
from typing import Any

import tvm

from .compiled_model import CompiledModel
from .frontend import import_model
from .pipeline import pipeline
from .report import CompileReport
from .targets import TargetPreset, resolve_target

__all__ = ["compile"]

_SPARSITY_MODES = ("auto", "off")


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
    imported = import_model(
        model, example_inputs, dynamic_shapes=dynamic_shapes, dynamic_batch=dynamic_batch
    )
    report = CompileReport()
    start = time.perf_counter()
    executable = tvm.compile(
        imported.mod,
        preset.tvm_target(),
        relax_pipeline=pipeline(
            preset, sparsity=sparsity, report=report, tuning_cache=tuning_cache
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
