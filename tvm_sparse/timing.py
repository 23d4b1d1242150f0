"""The project's one timing policy: how candidates are timed against each other and when a
difference counts.

Every choice tvm_sparse makes from timings (the end-to-end speed check of a compile, and the
decisions built on it) calls :func:`compare`:

- candidates run in interleaved rounds, the order rotating each round, so load from outside
  lands on all of them alike;
- each round yields one ratio per candidate against the reference (the simplest choice, e.g.
  the dense build), from calls made a few milliseconds apart; a burst of other work spoils
  single rounds, which the quantiles below ignore;
- rounds go on until the ratios are resolved (their 20th to 80th percentiles all on one side
  of the margin band, or all inside it) or the time budget runs out;
- a candidate wins only when it is faster than the reference by more than ``margin``; inside
  the margin the reference (the simpler build) wins, and between candidates that are within
  the margin of each other, the one named first (the caller's preference).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

__all__ = ["Comparison", "DeviceTimed", "TimingPolicy", "compare", "median_ms", "summarize"]


@dataclasses.dataclass(frozen=True)
class TimingPolicy:
    """Rounds, budget and margin of a comparison.

    Parameters
    ----------
    margin
        Relative difference under which the reference wins (0.05: a candidate must be more
        than 5% faster).
    min_rounds, max_rounds
        Interleaved rounds at least and at most.
    budget_s
        Wall time after which the comparison stops with what it has (after ``min_rounds``).
    round_ms
        Time each candidate runs per round; calls per round follow from a first call.
    """

    margin: float = 0.05
    min_rounds: int = 5
    max_rounds: int = 25
    budget_s: float = 3.0
    round_ms: float = 20.0


@dataclasses.dataclass
class Comparison:
    """The outcome of :func:`compare`.

    Attributes
    ----------
    winner : str
        The chosen candidate.
    ms : dict[str, float]
        Median per-call milliseconds of each candidate over all rounds.
    speedup : dict[str, float]
        Median over rounds of the reference's time over each candidate's (above 1: faster).
    rounds : int
        Rounds run.
    resolved : bool
        Whether the ratios settled before the budget ran out.
    round_ms : dict[str, list[float]]
        Each candidate's per-call milliseconds in each round, in round order: two candidates
        are compared round by round (:meth:`ratio`), so that the host's drift cancels.
    """

    winner: str
    ms: dict[str, float]
    speedup: dict[str, float]
    rounds: int
    resolved: bool
    round_ms: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    def ratio(self, name: str, other: str) -> float:
        """Median over rounds of ``name``'s time over ``other``'s (above 1: ``name`` is
        slower), paired within each round."""
        return float(np.median(np.asarray(self.round_ms[name]) / np.asarray(self.round_ms[other])))

    def describe(self) -> str:
        parts = [f"{name} {ms:.3f} ms" for name, ms in self.ms.items()]
        how = "resolved" if self.resolved else "budget reached"
        return f"{', '.join(parts)} ({self.rounds} interleaved rounds, {how})"


def compare(
    candidates: Mapping[str, Callable[[], object] | DeviceTimed],
    *,
    reference: str,
    policy: TimingPolicy | None = None,
) -> Comparison:
    """Time ``candidates`` (name -> one call, or a :class:`DeviceTimed`) against
    ``reference`` and choose one.

    The winner is the reference unless some candidate's median speedup over it exceeds
    ``1 + margin``; then the first candidate (in the order given: the caller's preference)
    whose speedup is within the margin of the best.
    """
    policy = policy or TimingPolicy()
    if reference not in candidates:
        raise ValueError(f"reference {reference!r} is not one of {sorted(candidates)}")
    names = list(candidates)
    calls = {}
    for name, call in candidates.items():  # warm up; size each candidate's round
        _round(call, 1)
        one = max(_round(call, 1), 1e-6)
        calls[name] = int(np.clip(policy.round_ms / 1e3 / one, 1, 1000))
    per_call: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    resolved = False
    rounds = 0
    while rounds < policy.max_rounds:
        order = names[rounds % len(names) :] + names[: rounds % len(names)]
        for name in order:
            per_call[name].append(_round(candidates[name], calls[name]))
        rounds += 1
        if rounds >= policy.min_rounds:
            resolved = _resolved(per_call, reference, policy.margin)
            if resolved or time.perf_counter() - start > policy.budget_s:
                break
    ref = np.asarray(per_call[reference])
    speedup = {name: float(np.median(ref / np.asarray(per_call[name]))) for name in names}
    best = max(speedup.values())
    winner = reference
    if best > 1 + policy.margin:
        # among candidates within the margin of the fastest, the first named: noise cannot
        # flip the choice between two that time alike
        winner = next(n for n in names if speedup[n] * (1 + policy.margin) >= best)
    return Comparison(
        winner=winner,
        ms={name: float(np.median(v)) * 1e3 for name, v in per_call.items()},
        speedup=speedup,
        rounds=rounds,
        resolved=resolved,
        round_ms={name: [t * 1e3 for t in v] for name, v in per_call.items()},
    )


def summarize(samples_s: Sequence[float]) -> dict[str, float]:
    """Median, min, p90 and mean in milliseconds."""
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "min_ms": float(ms.min()),
        "p90_ms": float(np.percentile(ms, 90)),
        "mean_ms": float(ms.mean()),
        "repeat": len(ms),
    }


def median_ms(
    call: Callable[[], object] | DeviceTimed, policy: TimingPolicy | None = None
) -> float:
    """Median milliseconds per call of ``call`` over the policy's ``min_rounds`` rounds: the
    same rounds as a comparison's, for a rate measured alone (a calibration table's)."""
    return compare({"call": call}, reference="call", policy=policy).ms["call"]


class DeviceTimed:
    """A candidate that runs on another device and is timed there: ``seconds(number)`` runs
    it ``number`` times and returns the device's seconds per call (TVM's ``time_evaluator``
    over RPC, where the round trip would swamp a kernel's time). :func:`compare` takes it
    in place of a call."""

    def __init__(self, seconds: Callable[[int], float]):
        self.seconds = seconds


def _round(candidate: Callable[[], object] | DeviceTimed, number: int) -> float:
    """Seconds per call of one round: the median of ``number`` timed calls."""
    if isinstance(candidate, DeviceTimed):
        return float(candidate.seconds(number))
    samples = []
    for _ in range(number):
        t0 = time.perf_counter()
        candidate()
        samples.append(time.perf_counter() - t0)
    return float(np.median(samples))


def _resolved(per_call: dict[str, list[float]], reference: str, margin: float) -> bool:
    """Whether every candidate's round ratios sit on one side of the margin band, or in it."""
    ref = np.asarray(per_call[reference])
    for name, times in per_call.items():
        if name == reference:
            continue
        ratios = ref / np.asarray(times)
        lo, hi = np.quantile(ratios, [0.2, 0.8])
        faster, slower = lo > 1 + margin, hi < 1 - margin
        within = lo > 1 - margin and hi < 1 + margin
        if not (faster or slower or within):
            return False
    return True
