"""RPCTracker: the boards of a TVM RPC tracker that :func:`~tvm_sparse.tune.autotune` uses."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RPCTracker"]


@dataclass(frozen=True)
class RPCTracker:
    """Boards registered with a TVM RPC tracker (``python -m tvm.exec.rpc_tracker``).

    Parameters
    ----------
    host, port : where the tracker listens.
    key : the key the boards registered with (``rpc_server --tracker ... --key KEY``).
    devices : int
        Sessions measuring at once; set it to the number of boards under ``key``.
    session_timeout_s : float
        Limit for one measurement session (emulated boards are slow).
    """

    host: str
    port: int
    key: str
    devices: int = 1
    session_timeout_s: float = 120.0

    @classmethod
    def parse(cls, value: str) -> RPCTracker:
        """``HOST:PORT:KEY`` or ``HOST:PORT:KEY:DEVICES`` (the CLI's ``--rpc``)."""
        parts = value.split(":")
        if len(parts) not in (3, 4) or not parts[1].isdigit():
            raise ValueError(f"rpc={value!r}: expected HOST:PORT:KEY[:DEVICES]")
        devices = int(parts[3]) if len(parts) == 4 else 1
        return cls(parts[0], int(parts[1]), parts[2], devices=devices)
