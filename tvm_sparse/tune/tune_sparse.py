"""tune_sparse: the knob candidates of one project sparse kernel, each generated and measured.

Every knob set of :func:`~.space.sparse_candidates` is generated, built by MetaSchedule's
builder and timed by its runner on the layer's real arrays, the default first.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from .cache import Record, TuningCache
from .confirm_winner import confirm_winner, is_confirmed, verdict
from .measurer import Measurer
from .space import SparseSite, canonical_knobs, sparse_candidates
from .tune_result import WorkloadResult, latency_text

__all__ = ["tune_sparse"]


def tune_sparse(
    site: SparseSite,
    store: TuningCache,
    measurer: Measurer,
    *,
    trials: int,
    say: Callable[[str], None],
    tag: str,
) -> WorkloadResult:
    """Measure up to ``trials`` knob sets of ``site``'s kernel (those in the cache are skipped),
    then re-measure the fastest against the default; ``tag`` starts the progress lines."""
    key = site.key
    name = site.spec.name
    done = {canonical_knobs(r.knobs) for r in store.for_workload(key) if r.knobs}
    has_default = any(r.is_default for r in store.for_workload(key))
    default, *others = sparse_candidates(site.spec, site.knobs, measurer.target)
    # A fixed shuffle: few trials still sample the whole space, and a resumed run sees the
    # same candidates in the same order.
    random.Random(0).shuffle(others)
    candidates = [default, *others][:trials]
    pending = [
        (n, knobs)
        for n, knobs in enumerate(candidates)
        if not ((n == 0 and has_default) or (n > 0 and canonical_knobs(knobs) in done))
    ]
    measured = 0
    with measurer.arrays(site.arrays, key.replace(":", "_")):
        funcs = [site.spec.build(knobs) for _, knobs in pending]
        for i, seconds in measurer.measure(funcs):
            n, knobs = pending[i]
            source = "default" if n == 0 else "candidate"
            store.append(Record("sparse", key, source, seconds, name=name, knobs=knobs))
            measured += 1
            say(f"{tag} {name} {n + 1}/{len(candidates)} {knobs}: {latency_text(seconds)}")
        best = store.best(key)
        if best is not None and not is_confirmed(store, key, best):
            measured += confirm_winner(
                measurer,
                store,
                (site.spec.build(candidates[0]), site.spec.build(best.knobs)),
                (
                    Record("sparse", key, "default", math.inf, knobs=candidates[0]),
                    Record("sparse", key, "confirm", math.inf, knobs=best.knobs),
                ),
            )
            say(f"{tag} {name} re-measured: {verdict(store, key)}")
    return WorkloadResult.from_cache("sparse", name, key, store, measured)
