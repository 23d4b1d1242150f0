"""What a compiled model takes and gives back, wherever its Relax VM runs.

:func:`check_inputs` checks a call's arguments against the model's inputs,
:func:`to_tvm_tensors` places them on the VM's device, :func:`convert_outputs` turns the VM's
result back into the caller's kind (torch in, torch out) and the source model's structure, and
:func:`time_vm_main` times the VM's ``main`` alone. :class:`~tvm_sparse.CompiledModel` (this
machine) and :class:`~tvm_sparse.RemoteModel` (a device over TVM RPC) both call through these, so
the two take and return the same things and refuse the same mistakes with the same words.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import tvm

from ..frontend import InputSpec
from ..timing import summarize

__all__ = ["check_inputs", "convert_outputs", "time_vm_main", "to_tvm_tensors"]

#: TVM takes host memory without a copy only at this alignment.
_ZERO_COPY_ALIGNMENT = 64


def check_inputs(args: tuple, inputs: list[InputSpec]) -> tuple[list[np.ndarray], bool]:
    """``args`` as contiguous numpy arrays, checked against ``inputs`` (dynamic dimensions are
    named strings, equal names equal sizes), and whether any was a torch tensor (the outputs
    are then torch tensors too)."""
    if len(args) != len(inputs):
        expected = ", ".join(s.describe() for s in inputs)
        raise TypeError(f"the model takes {len(inputs)} inputs ({expected}), got {len(args)}")
    as_torch = False
    arrays = []
    symbols: dict[str, int] = {}
    for arg, spec in zip(args, inputs, strict=True):
        if type(arg).__module__.startswith("torch"):
            as_torch = True
            arg = arg.detach().cpu().numpy()
        if not isinstance(arg, np.ndarray):
            raise TypeError(
                f"input {spec.name!r} must be a numpy array or torch tensor, "
                f"not {type(arg).__name__}"
            )
        _check_input(arg, spec, symbols)
        arrays.append(np.ascontiguousarray(arg))
    return arrays, as_torch


def convert_outputs(result: Any, output_spec: str | None, *, as_torch: bool) -> Any:
    """The VM's ``result`` as torch tensors or numpy arrays, in the structure ``output_spec``
    (a serialised PyTorch pytree spec) describes; ``None``: the VM's tuple (or tensor)."""
    convert = _to_torch if as_torch else _to_numpy
    if output_spec is not None:
        from torch.utils import _pytree as pytree

        outputs = [convert(out) for out in _flatten(result)]
        return pytree.tree_unflatten(outputs, _treespec(output_spec))
    return _map_structure(result, convert)


def to_tvm_tensors(
    arrays: list[np.ndarray], device: tvm.runtime.Device
) -> list[tvm.runtime.Tensor]:
    """Contiguous arrays as TVM tensors on ``device``: shared with numpy where the memory allows
    it (a host device, aligned memory), copied otherwise."""
    return [_to_tvm(array, device) for array in arrays]


def time_vm_main(
    vm: Any,
    device: tvm.runtime.Device,
    tensors: list[tvm.runtime.Tensor],
    *,
    warmup: int,
    repeat: int,
    min_ms: float,
) -> dict[str, float]:
    """Latency of one call of ``vm``'s ``main`` on ``tensors``, timed on ``device`` by TVM's
    ``time_evaluator`` (so over RPC too): median, min, p90 and mean in ms of ``repeat`` samples
    (each at least ``min_ms`` long), after ``warmup`` calls."""
    vm.set_input("main", *tensors)
    for _ in range(warmup):
        vm.invoke_stateful("main")
    timer = vm.time_evaluator(
        "invoke_stateful", device, number=1, repeat=repeat, min_repeat_ms=min_ms
    )
    return summarize(timer("main").results)


def _check_input(arg: np.ndarray, spec: InputSpec, symbols: dict[str, int]) -> None:
    if arg.dtype != spec.dtype:  # a dtype compares with its name without making a string
        raise TypeError(
            f"input {spec.name!r} has dtype {arg.dtype}, expected {spec.dtype}; "
            f"convert it with .astype({spec.dtype!r})"
        )
    if arg.ndim != len(spec.shape):
        raise ValueError(
            f"input {spec.name!r} has shape {list(arg.shape)}, expected rank {len(spec.shape)} "
            f"({spec.describe()})"
        )
    for axis, (got, want) in enumerate(zip(arg.shape, spec.shape, strict=True)):
        if isinstance(want, int):
            ok = got == want
        else:
            ok = symbols.setdefault(want, got) == got
        if not ok:
            raise ValueError(
                f"input {spec.name!r} has shape {list(arg.shape)}: dimension {axis} is {got}, "
                f"expected {want} ({spec.describe()}); compile with dynamic_batch=True or "
                "dynamic_shapes for a varying size"
            )


@functools.lru_cache(maxsize=64)
def _treespec(output_spec: str) -> Any:
    """The spec parsed once, not at every call."""
    from torch.utils import _pytree as pytree

    return pytree.treespec_loads(output_spec)


def _to_tvm(array: np.ndarray, device: tvm.runtime.Device) -> tvm.runtime.Tensor:
    if device.dlpack_device_type() == tvm.cpu().dlpack_device_type() and (
        array.ctypes.data % _ZERO_COPY_ALIGNMENT == 0 and array.size
    ):
        return tvm.runtime.from_dlpack(array)
    return tvm.runtime.tensor(array, device)


def _to_numpy(tensor: tvm.runtime.Tensor) -> np.ndarray:
    """The result as numpy: host tensors are shared (the array keeps them alive), not copied."""
    if tensor.device.dlpack_device_type() == tvm.cpu().dlpack_device_type():
        return np.from_dlpack(tensor)
    return tensor.numpy()


def _to_torch(tensor: tvm.runtime.Tensor) -> Any:
    import torch

    return torch.from_numpy(_to_numpy(tensor))


def _map_structure(result: Any, convert: Any) -> Any:
    """The VM's result with tensors converted: a tensor, or nested tuples of them."""
    if isinstance(result, tvm.runtime.Tensor):
        return convert(result)
    return tuple(_map_structure(item, convert) for item in result)


def _flatten(result: Any) -> list[Any]:
    if isinstance(result, tvm.runtime.Tensor):
        return [result]
    flat = []
    for item in result:
        flat.extend(_flatten(item))
    return flat
