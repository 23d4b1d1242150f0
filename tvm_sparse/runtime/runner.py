"""Where a measurement runs: this machine, or a device behind a TVM RPC session.

Calibration tables (:func:`tvm_sparse.measure.calibrate`) and per-layer timings
(:class:`tvm_sparse.layer_timing.LayerTimer`) build here and time through a :class:`Runner`,
so the same code measures this machine or a board.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from typing import Any

import numpy as np
import tvm
from tvm import rpc as tvm_rpc

from ..timing import DeviceTimed
from .threading import ThreadConfig, load_module

__all__ = ["Runner"]


class Runner:
    """Where a measured build runs: this machine (``session=None``), or the device behind a
    TVM RPC session, for which libraries are linked with ``cross_compiler``.

    On this machine a call is timed by the caller's clock, on the launcher compiled models
    run on. On a device it is timed there by TVM's ``time_evaluator``
    (:class:`~tvm_sparse.timing.DeviceTimed`): the round trip of an RPC call would swamp a
    kernel's time.

    Attributes
    ----------
    name : str
        The device as records and reports name it: ``this machine`` or ``rpc:HOST:PORT[:KEY]``.
    """

    def __init__(
        self, session: tvm_rpc.RPCSession | None = None, cross_compiler: str | None = None,
        name: str | None = None,
    ):  # fmt: skip
        self.session = session
        self.cross_compiler = cross_compiler
        self.device = session.cpu(0) if session is not None else tvm.cpu()
        self.name = name or ("this machine" if session is None else "the rpc device")

    @property
    def board(self) -> str | None:
        """The name records of a board are kept under; ``None`` for this machine (whose
        records are keyed by :func:`tvm_sparse.targets.machine_key`)."""
        return self.name if self.session is not None else None

    @classmethod
    def connect(cls, rpc: tvm_rpc.RPCSession | str | Runner, cross_compiler: str | None) -> Runner:
        """A runner on ``rpc``: a session, ``HOST:PORT`` (an RPC server) or ``HOST:PORT:KEY``
        (a board registered with a tracker); a runner is returned as it is."""
        if isinstance(rpc, Runner):
            return rpc
        if isinstance(rpc, tvm_rpc.RPCSession):
            return cls(rpc, cross_compiler)
        parts = str(rpc).split(":")
        if len(parts) not in (2, 3) or not parts[1].isdigit():
            raise ValueError(
                f"rpc={rpc!r}: expected HOST:PORT (an RPC server) or HOST:PORT:KEY (a tracker)"
            )
        host, port = parts[0], int(parts[1])
        if len(parts) == 2:
            session = tvm_rpc.connect(host, port, session_timeout=3600)
        else:
            session = tvm_rpc.connect_tracker(host, port).request(parts[2], session_timeout=3600)
        return cls(session, cross_compiler, name=f"rpc:{rpc}")

    def load(self, built: Any) -> tvm.runtime.Module:
        """``built`` (a compiled library or Relax executable) loaded where it runs."""
        if self.session is None:
            return load_module(built, ThreadConfig())[0]
        from tvm.support import cc

        name = f"tvm_sparse_measure_{uuid.uuid4().hex[:12]}.so"
        kwargs = {}
        if self.cross_compiler:
            kwargs["fcompile"] = cc.cross_compiler(self.cross_compiler)
        with tempfile.TemporaryDirectory(prefix="tvm_sparse_rpc_") as tmp:
            path = os.path.join(tmp, name)
            built.export_library(path, **kwargs)
            self.session.upload(path)
        return self.session.load_module(name)

    def tensors(self, arrays: list[np.ndarray]) -> list:
        return [tvm.runtime.tensor(a, self.device) for a in arrays]

    def timed(self, module: Any, args: list, func_name: str = "main"):
        """One call of ``module[func_name](*args)`` as :func:`tvm_sparse.timing.compare` takes
        it: a call on this machine, a :class:`~tvm_sparse.timing.DeviceTimed` on a device."""
        if self.session is None:
            func = module[func_name]
            return lambda: func(*args)

        def seconds(number: int) -> float:
            timer = module.time_evaluator(func_name, self.device, number=number, repeat=1)
            return float(np.median(timer(*args).results))

        return DeviceTimed(seconds)
