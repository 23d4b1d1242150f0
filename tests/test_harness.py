"""The shared timing harness: runtimes take turns, and each keeps its fastest turn."""

from benchmarks import harness


def test_interleave_rotates_turns_and_keeps_the_fastest_median(monkeypatch):
    waits = []
    monkeypatch.setattr(harness, "settle", lambda: waits.append(1))
    medians = {"a": iter([5.0, 3.0, 4.0]), "b": iter([2.0, 6.0, 1.0]), "c": iter([7.0] * 3)}
    order = []

    def measure(name):
        def run():
            order.append(name)
            return {"median_ms": next(medians[name])}

        return run

    best = harness.interleave({name: measure(name) for name in "abc"}, rounds=3)

    assert best == {"a": 3.0, "b": 1.0, "c": 7.0}
    assert order == list("abcbcacab")
    assert len(waits) == 9


def test_interleave_can_skip_the_wait_between_turns(monkeypatch):
    monkeypatch.setattr(harness, "settle", lambda: (_ for _ in ()).throw(AssertionError))
    best = harness.interleave({"x": lambda: {"median_ms": 1.0}}, rounds=2, settle_between=False)
    assert best == {"x": 1.0}


def test_in_fresh_process_runs_elsewhere_and_returns_the_result():
    import os

    assert harness.in_fresh_process(os.getpid) != os.getpid()
    assert harness.in_fresh_process(divmod, 7, 2) == (3, 1)
