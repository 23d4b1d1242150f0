"""Import a model into Relax: PyTorch modules, exported programs, ONNX models and IRModules.

Weights are bound as Relax constants, so the compiler passes can read the zeros in them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import tvm
from tvm import relax

__all__ = [
    "ImportedModel",
    "InputSpec",
    "ModelImportError",
    "UnsupportedOperatorError",
    "import_model",
]


class ModelImportError(ValueError):
    """The model could not be read: a malformed file, a wrong type or missing inputs."""


class UnsupportedOperatorError(NotImplementedError):
    """The model uses operators that TVM's importer cannot translate."""


@dataclass(frozen=True)
class InputSpec:
    """One input of the compiled model: ``shape`` holds ``None`` where a dimension is dynamic."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def describe(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclass
class ImportedModel:
    """A Relax module with what is needed to call it like the source model.

    ``output_spec`` is a serialised PyTorch pytree spec (``torch.utils._pytree``) for PyTorch
    sources, so calls return the source's structure; ``None`` means a flat tuple of outputs, or
    a single tensor when there is one output.
    """

    mod: tvm.IRModule
    inputs: list[InputSpec]
    output_spec: str | None
    source: str


def _input_specs(func: relax.Function) -> list[InputSpec]:
    specs = []
    for param in func.params:
        ty = param.ty
        if not isinstance(ty, relax.TensorType) or ty.shape is None:
            raise ModelImportError(
                f"input {param.name!r} is not a tensor of known rank ({ty}); "
                "tvm_sparse compiles models whose inputs are tensors"
            )
        dims: list[int | str] = []
        for dim in ty.shape.values:
            dims.append(int(dim) if isinstance(dim, tvm.tirx.IntImm) else str(dim))
        specs.append(InputSpec(param.name, tuple(dims), str(ty.dtype)))
    return specs


def _from_torch(
    model: Any, example_inputs: Any, dynamic_shapes: Any, dynamic_batch: bool
) -> ImportedModel:
    import torch
    from torch.utils import _pytree as pytree
    from tvm.relax.frontend.torch import from_exported_program

    if isinstance(model, torch.nn.Module):
        if example_inputs is None:
            raise ModelImportError(
                "a torch.nn.Module needs example_inputs (a tuple of tensors with the shapes it is "
                "called with) to be exported; pass example_inputs=(x,)"
            )
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        example_inputs = tuple(example_inputs)
        if dynamic_batch and dynamic_shapes is None:
            batch = torch.export.Dim("batch", min=1, max=65536)
            dynamic_shapes = tuple({0: batch} for _ in example_inputs)
        try:
            exported = torch.export.export(
                model.eval(), example_inputs, dynamic_shapes=dynamic_shapes
            )
        except Exception as err:
            raise ModelImportError(f"torch.export could not export the model: {err}") from err
    else:
        exported = model
    try:
        mod = from_exported_program(exported, keep_params_as_input=False)
    except (AssertionError, KeyError, NotImplementedError) as err:
        missing = _unsupported_torch_ops(exported)
        if missing:
            raise UnsupportedOperatorError(
                f"TVM's PyTorch importer cannot translate {', '.join(missing)}; replace these "
                "ops in the model, or export to ONNX and compile the .onnx file"
            ) from err
        raise ModelImportError(f"TVM could not import the exported program: {err}") from err
    spec = pytree.treespec_dumps(exported.call_spec.out_spec)
    return ImportedModel(mod, _input_specs(mod["main"]), spec, "torch")


def _unsupported_torch_ops(exported: Any) -> list[str]:
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    supported = ExportedProgramImporter().create_convert_map()
    missing = set()
    for node in exported.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if name not in supported:
            missing.add(name)
    return sorted(missing)


def _from_onnx(model: Any, dynamic_batch: bool) -> ImportedModel:
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise ModelImportError(f"ONNX file {path!r} does not exist")
        try:
            model = onnx.load(path)
        except Exception as err:
            raise ModelImportError(
                f"{path!r} is not a readable ONNX model (truncated or corrupt?): {err}"
            ) from err
    try:
        onnx.checker.check_model(model)
    except Exception as err:
        raise ModelImportError(f"malformed ONNX model: {err}") from err
    if dynamic_batch:
        model = _make_batch_dynamic(model)
    supported = _onnx_supported_ops()
    missing = sorted({n.op_type for n in model.graph.node if n.op_type not in supported})
    if missing:
        raise UnsupportedOperatorError(
            f"TVM's ONNX importer cannot translate {', '.join(missing)}; "
            "re-export the model without these ops"
        )
    try:
        mod = from_onnx(model, keep_params_in_input=False)
    except Exception as err:
        raise ModelImportError(f"TVM could not import the ONNX model: {err}") from err
    return ImportedModel(mod, _input_specs(mod["main"]), None, "onnx")


def _onnx_supported_ops() -> set[str]:
    from tvm.relax.frontend.onnx import onnx_frontend

    return set(onnx_frontend._get_convert_map())


def _make_batch_dynamic(model: Any) -> Any:
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    initializers = {init.name for init in model.graph.initializer}
    for value in list(model.graph.input) + list(model.graph.output):
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].dim_param = "batch"
    return model


def import_model(
    model: Any,
    example_inputs: Any = None,
    *,
    dynamic_shapes: Any = None,
    dynamic_batch: bool = False,
) -> ImportedModel:
    """Import ``model`` into a Relax module with weights bound as constants.

    Parameters
    ----------
    model : torch.nn.Module | torch.export.ExportedProgram | onnx.ModelProto | str | tvm.IRModule
        The model; a string or path names an ``.onnx`` file.
    example_inputs : tuple of torch.Tensor, optional
        Required for a ``torch.nn.Module``: the inputs it is exported with.
    dynamic_shapes : optional
        Passed to :func:`torch.export.export` (``torch.export.Dim`` per dynamic dimension).
    dynamic_batch : bool
        Make the first dimension of every input dynamic (PyTorch and ONNX sources).

    Raises
    ------
    ModelImportError
        The model cannot be read or is of an unsupported type.
    UnsupportedOperatorError
        The model holds operators TVM cannot import.
    """
    if isinstance(model, tvm.IRModule):
        if "main" not in model.get_global_vars() and not any(
            gv.name_hint == "main" for gv in model.get_global_vars()
        ):
            raise ModelImportError("the IRModule has no 'main' function to compile")
        return ImportedModel(model, _input_specs(model["main"]), None, "relax")
    if isinstance(model, (str, os.PathLike)):
        return _from_onnx(model, dynamic_batch)
    module_name = type(model).__module__
    if module_name.startswith("onnx"):
        return _from_onnx(model, dynamic_batch)
    if module_name.startswith("torch"):
        return _from_torch(model, example_inputs, dynamic_shapes, dynamic_batch)
    try:
        import torch

        if isinstance(model, torch.nn.Module):
            return _from_torch(model, example_inputs, dynamic_shapes, dynamic_batch)
    except ImportError:  # torch is a dependency, but IRModule and ONNX paths do not need it
        pass
    raise ModelImportError(
        f"cannot compile a {type(model).__name__}: pass a torch.nn.Module (with example_inputs), "
        "a torch.export.ExportedProgram, an onnx.ModelProto, a path to an .onnx file, or a Relax "
        "tvm.IRModule"
    )
