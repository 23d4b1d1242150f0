"""Run a compiled model on a remote device through TVM RPC.

The model is exported for its target (cross-compiled where the target is not this machine),
uploaded through the :class:`tvm.rpc.RPCSession`, loaded there and driven with the Relax VM's
stateful API, which is the one that returns tuple outputs over RPC::

    session = tvm.rpc.connect("192.168.1.20", 9090)        # or connect_tracker(...).request(key)
    remote = compiled.to_remote(session)                   # same as tvm_sparse.to_remote(...)
    y = remote(x)                                          # torch in, torch out, as locally
    print(remote.benchmark(x))                             # timed on the device
"""

from __future__ import annotations

import os
import tempfile
import uuid
from typing import Any

import tvm
from tvm import relax, rpc

from .compiled_model import CompiledModel, _flatten, _map_structure, _to_numpy, _to_torch

__all__ = ["RemoteModel", "to_remote"]


class RemoteModel(CompiledModel):
    """A :class:`CompiledModel` whose Relax VM lives on an RPC device.

    Calls take and return what the local model does (same input checks, same output
    structure); inputs are copied to the device and outputs copied back. ``benchmark`` times
    on the device with the remote ``time_evaluator``. ``export_library`` still writes the
    library for the target.

    Attributes
    ----------
    session : tvm.rpc.RPCSession
        The session the model was loaded through; it must stay open while the model is used.
    remote_path : str
        The library's name in the server's working directory.
    """

    def __init__(
        self,
        compiled: CompiledModel,
        session: rpc.RPCSession,
        *,
        device: tvm.runtime.Device | None = None,
    ):
        if not isinstance(session, rpc.RPCSession):
            raise TypeError(
                f"session must be a tvm.rpc.RPCSession (from tvm.rpc.connect or "
                f"tvm.rpc.connect_tracker(...).request(key)), not {type(session).__name__}"
            )
        super().__init__(
            compiled.executable,
            preset=compiled.preset,
            inputs=compiled.inputs,
            output_spec=compiled.output_spec,
            report=compiled.report,
        )
        self.session = session
        if device is None:
            device = session.cuda(0) if self.target.kind.name == "cuda" else session.cpu(0)
        self.remote_path = f"tvm_sparse_{uuid.uuid4().hex[:12]}.so"
        with tempfile.TemporaryDirectory(prefix="tvm_sparse_rpc_") as tmp:
            local_path = compiled.export_library(os.path.join(tmp, self.remote_path))
            session.upload(local_path)
        # The base class's ``vm`` property returns a VM that is already set.
        self._vm = relax.VirtualMachine(session.load_module(self.remote_path), device)
        self._device = device

    def __call__(self, *args: Any) -> Any:
        tensors, as_torch = self._convert_inputs(args)
        # ``vm["main"](...)`` hands a tuple result back as an opaque RPC object reference;
        # the stateful API returns nested Python tuples of tensors.
        self.vm.set_input("main", *tensors)
        self.vm.invoke_stateful("main")
        result = self.vm.get_outputs("main")
        convert = _to_torch if as_torch else _to_numpy
        if self.output_spec is not None:
            from torch.utils import _pytree as pytree

            outputs = [convert(out) for out in _flatten(result)]
            return pytree.tree_unflatten(outputs, pytree.treespec_loads(self.output_spec))
        return _map_structure(result, convert)

    def __repr__(self) -> str:
        ins = ", ".join(s.describe() for s in self.inputs)
        return f"RemoteModel(target={self.preset.name!r}, device={self._device}, inputs=[{ins}])"


def to_remote(
    compiled: CompiledModel,
    session: rpc.RPCSession,
    *,
    device: tvm.runtime.Device | None = None,
) -> RemoteModel:
    """Upload ``compiled`` through ``session`` and return a model that runs on that device.

    Parameters
    ----------
    compiled : CompiledModel
        A model from :func:`tvm_sparse.compile` or :func:`tvm_sparse.load`.
    session : tvm.rpc.RPCSession
        From ``tvm.rpc.connect(host, port)`` or ``tvm.rpc.connect_tracker(...).request(key)``.
    device : tvm.runtime.Device, optional
        A device of the session; ``session.cpu(0)`` (``session.cuda(0)`` for CUDA targets) if
        omitted.

    Returns
    -------
    RemoteModel
        Called like ``compiled``; see :class:`RemoteModel`.
    """
    return RemoteModel(compiled, session, device=device)
