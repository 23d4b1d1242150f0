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

from .runtime.model_io import check_inputs, convert_outputs, time_vm_main, to_tvm_tensors
from .targets.backend import backend_of

__all__ = ["RemoteModel", "to_remote"]


class RemoteModel:
    """A :class:`~tvm_sparse.CompiledModel` run by a Relax VM on an RPC device.

    Calls take and return what the local model does (same input checks, same output
    structure); inputs are copied to the device and outputs copied back. ``benchmark`` times
    on the device with the remote ``time_evaluator``. ``export_library`` still writes the
    library for the target.

    Attributes
    ----------
    compiled : CompiledModel
        The model on this machine that was uploaded; ``preset``, ``inputs``, ``output_spec``,
        ``report`` and ``executable`` are its own.
    session : tvm.rpc.RPCSession
        The session the model was loaded through; it must stay open while the model is used.
    remote_path : str
        The library's name in the server's working directory.
    vm : relax.VirtualMachine
        The VM on the device, ``vm_device``.
    """

    def __init__(
        self,
        compiled: Any,
        session: rpc.RPCSession,
        *,
        device: tvm.runtime.Device | None = None,
    ):
        if not isinstance(session, rpc.RPCSession):
            raise TypeError(
                f"session must be a tvm.rpc.RPCSession (from tvm.rpc.connect or "
                f"tvm.rpc.connect_tracker(...).request(key)), not {type(session).__name__}"
            )
        self.compiled = compiled
        self.session = session
        # what describes the model is the local one's (shared, as the library is the same)
        self.preset = compiled.preset
        self.inputs = compiled.inputs
        self.output_spec = compiled.output_spec
        self.report = compiled.report
        self.executable = compiled.executable
        if device is None:
            device = session.device(backend_of(self.target).device, 0)
        self.remote_path = f"tvm_sparse_{uuid.uuid4().hex[:12]}.so"
        with tempfile.TemporaryDirectory(prefix="tvm_sparse_rpc_") as tmp:
            local_path = compiled.export_library(os.path.join(tmp, self.remote_path))
            session.upload(local_path)
        self.vm = relax.VirtualMachine(session.load_module(self.remote_path), device)
        self.vm_device = device

    @property
    def target(self) -> tvm.target.Target:
        return self.compiled.target

    def _convert_inputs(self, args: tuple) -> tuple[list[tvm.runtime.Tensor], bool]:
        arrays, as_torch = check_inputs(args, self.inputs)
        return to_tvm_tensors(arrays, self.vm_device), as_torch

    def __call__(self, *args: Any) -> Any:
        tensors, as_torch = self._convert_inputs(args)
        # ``vm["main"](...)`` hands a tuple result back as an opaque RPC object reference;
        # the stateful API returns nested Python tuples of tensors.
        self.vm.set_input("main", *tensors)
        self.vm.invoke_stateful("main")
        return convert_outputs(self.vm.get_outputs("main"), self.output_spec, as_torch=as_torch)

    def benchmark(
        self, *args: Any, warmup: int = 3, repeat: int = 30, min_repeat_ms: float = 0
    ) -> dict[str, float]:
        """Latency of one call on the device, without Python conversion or the RPC round
        trip: median, min, p90 and mean in ms."""
        tensors, _ = self._convert_inputs(args)
        return time_vm_main(
            self.vm, self.vm_device, tensors, warmup=warmup, repeat=repeat, min_ms=min_repeat_ms
        )

    def profile(self, *args: Any, calls: int = 20) -> list[Any]:
        """Milliseconds per call of each kernel, slowest first
        (:func:`tvm_sparse.profiling.profile`)."""
        from .profiling import profile

        return profile(self, *args, calls=calls)

    def export_library(self, path: str | os.PathLike) -> str:
        """Write the library for the target and its metadata
        (:meth:`CompiledModel.export_library`)."""
        return self.compiled.export_library(path)

    def to_remote(self, session: Any, *, device: tvm.runtime.Device | None = None) -> RemoteModel:
        """Upload the same model through another session (:meth:`CompiledModel.to_remote`)."""
        return RemoteModel(self.compiled, session, device=device)

    def __repr__(self) -> str:
        ins = ", ".join(s.describe() for s in self.inputs)
        return f"RemoteModel(target={self.preset.name!r}, device={self.vm_device}, inputs=[{ins}])"


def to_remote(
    compiled: Any,
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
