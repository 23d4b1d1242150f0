"""Where tvm_sparse keeps files between runs (tuning records, measured calibration tables)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/tvm_sparse``, or ``~/.cache/tvm_sparse`` when it is unset.

    Read at every call, not at import, so that setting ``XDG_CACHE_HOME`` later (as the test
    suite does) moves every cache. A relative or empty ``XDG_CACHE_HOME`` is ignored, as the XDG
    base directory specification asks.
    """
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "tvm_sparse"
