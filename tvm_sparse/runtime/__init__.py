"""Running compiled models: the parallel launcher and its thread settings; where measurements
run (``runner``: this machine or a board over TVM RPC)."""

from .threading import ThreadConfig, available_cores, configure, install, pool_stats

__all__ = ["ThreadConfig", "available_cores", "configure", "install", "pool_stats"]
