"""Relax elementwise ops by NumPy function, for passes that evaluate them on constants."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: Binary elementwise ops (broadcasting as Relax does).
BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "relax.add": np.add,
    "relax.subtract": np.subtract,
    "relax.multiply": np.multiply,
    "relax.divide": np.divide,
    "relax.maximum": np.maximum,
    "relax.minimum": np.minimum,
}
#: Unary ops NumPy computes to the same correctly rounded result as the generated code.
EXACT_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relax.negative": np.negative,
    "relax.abs": np.abs,
    "relax.sqrt": np.sqrt,
    "relax.rsqrt": lambda v: 1.0 / np.sqrt(v),
    "relax.square": np.square,
}
