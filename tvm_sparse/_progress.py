"""Progress lines of long work (tuning, calibration): to stderr, or to a function of the caller."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

__all__ = ["progress_fn"]


def progress_fn(progress: bool | Callable[[str], None], tag: str = "") -> Callable[[str], None]:
    """``progress`` itself if callable; else a printer to stderr (``True``) or nothing."""
    if callable(progress):
        return progress
    if not progress:
        return lambda _msg: None
    prefix = f"tvm-sparse {tag}".strip()

    def say(message: str) -> None:
        print(f"[{prefix} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    return say
