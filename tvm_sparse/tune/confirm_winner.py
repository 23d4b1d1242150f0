"""confirm_winner: the search's fastest candidate measured again, interleaved with the default.

The fastest of many noisy samples is flattered; the re-measured ``"confirm"`` records decide
(:meth:`~.cache.TuningCache.ranked`), so compile uses a tuned schedule only where it is faster
than the default by :data:`~.cache.MIN_GAIN`.
"""

from __future__ import annotations

import dataclasses

import tvm

from .cache import Record, TuningCache
from .measurer import Measurer

__all__ = ["confirm_winner", "is_confirmed", "verdict"]


def confirm_winner(
    measurer: Measurer,
    store: TuningCache,
    funcs: tuple[tvm.tirx.PrimFunc, tvm.tirx.PrimFunc],
    records: tuple[Record, Record],
    rounds: int = 2,
) -> int:
    """Measure the default and the winner ``funcs`` in turn ``rounds`` times; append each pair
    as the ``records`` (a ``"default"`` and a ``"confirm"`` one) with the times measured.

    Returns the number of measurements.
    """
    default, winner = records
    for default_s, winner_s in measurer.interleaved(*funcs, rounds=rounds):
        store.append(dataclasses.replace(default, latency_s=default_s))
        store.append(dataclasses.replace(winner, latency_s=winner_s))
    return 2 * rounds


def is_confirmed(store: TuningCache, key: str, best: Record) -> bool:
    """Whether ``best`` was re-measured already (a resumed run does not measure it again)."""
    same = (lambda r: r.knobs == best.knobs) if best.knobs else (lambda r: r.record == best.record)
    return any(r.source == "confirm" and same(r) for r in store.for_workload(key))


def verdict(store: TuningCache, key: str) -> str:
    """What the re-measurement decided, for progress lines."""
    best = store.best(key)
    return "tuned schedule kept" if best is not None else "default kept (gain was noise)"
