"""KnobSampler: a rule's knobs drawn as ``sample_categorical`` decisions of the schedule's trace.

A tunable rule (``Matmul``, ``Conv2d``, ``Conv2dNHWC``, ``GEMV``) asks the sampler for a knob at
the point where its schedule reads the knob, with the values valid for the workload in hand; the
rule's default comes first, so decision 0 everywhere is the default schedule::

    rows = sampler("tile_rows", knobs.tile_rows, [d for d in (1, 2, 4, 8) if m % d == 0])

Each call records ``sample_categorical(candidates, probs, decision)`` in the trace and returns the
drawn value (``sch.get`` of the sampled variable), which the rule then uses like a fixed knob. A
knob with a single valid value records nothing.

MetaSchedule replays a trace instruction by instruction and never re-runs the Python that wrote
it: a decision that only steers Python (a split factor computed from it, a branch taken) is dead
code to the trace, and ``Trace.simplified`` drops it. Re-drawing a decision therefore means
running the rule again; ``tvm_sparse.tune.space.rule_space`` does that for every decision vector
and hands each schedule to MetaSchedule as a design space of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tvm import s_tir

__all__ = ["KnobDecisionError", "KnobSampler"]


class KnobDecisionError(ValueError):
    """A decision outside the candidates of its knob."""


class KnobSampler:
    """Draws knob values through ``sch.sample_categorical``, in the order the rule asks for them.

    Parameters
    ----------
    sch : s_tir.Schedule
        The schedule whose trace records the decisions.
    decisions : sequence of int or None
        Index into the candidates of the 1st, 2nd, ... knob drawn; ``None`` lets the schedule's
        random state pick.
    fill : int or None
        Decision for the knobs past the end of ``decisions``: ``0`` (the default value) or
        ``None`` (random).
    """

    def __init__(
        self, sch: s_tir.Schedule, decisions: Sequence[int | None] = (), *, fill: int | None = 0
    ):
        self.sch = sch
        self.decisions = list(decisions)
        self.fill = fill
        #: Knob names in the order drawn, their candidates, and the decision taken for each.
        self.names: list[str] = []
        self.candidates: list[list[int]] = []
        self.taken: list[int] = []

    def __call__(self, name: str, default: int, candidates: Iterable[int]) -> int:
        """The value of knob ``name``: ``default`` or one of ``candidates``."""
        values: list[int] = []
        for value in (default, *candidates):
            if int(value) not in values:
                values.append(int(value))
        if len(values) == 1:
            return values[0]
        pos = len(self.names)
        decision = self.decisions[pos] if pos < len(self.decisions) else self.fill
        if decision is not None and not 0 <= decision < len(values):
            raise KnobDecisionError(
                f"decision {decision} for knob {name!r} (position {pos}): "
                f"valid are 0..{len(values) - 1} for candidates {values}"
            )
        probs = [1.0 / len(values)] * len(values)
        drawn = int(self.sch.get(self.sch.sample_categorical(values, probs, decision=decision)))
        self.names.append(name)
        self.candidates.append(values)
        self.taken.append(values.index(drawn))
        return drawn

    @property
    def knobs(self) -> dict[str, int]:
        """The value drawn for each knob (knobs with a single valid value are left out)."""
        return {n: c[t] for n, c, t in zip(self.names, self.candidates, self.taken, strict=True)}
