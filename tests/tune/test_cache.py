"""The tuning cache: durable appends, torn and foreign files, the never-slower rule."""

from __future__ import annotations

import json
import math

import pytest

from tvm_sparse.targets import resolve_target
from tvm_sparse.tune import TuningCache, TuningCacheError, TuningCacheWarning
from tvm_sparse.tune.cache import FORMAT, Record, resolve_cache


def _rec(latency, source="candidate", key="sparse:abc", m_tile=4):
    return Record("sparse", key, source, latency, name="k", knobs={"m_tile": m_tile})


def test_append_then_read_back(cache):
    cache.append(_rec(2.0, "default"))
    cache.append(_rec(1.0, m_tile=8))
    lines = cache.path.read_text().splitlines()
    head = json.loads(lines[0])
    assert head["format"] == FORMAT and head["target"] == str(cache.target)
    assert json.loads(lines[2])["tvm_sparse"] and json.loads(lines[2])["tvm"]
    again = TuningCache(cache.target, path=cache.path)
    assert [r.latency_s for r in again.for_workload("sparse:abc")] == [2.0, 1.0]
    assert again.best("sparse:abc").knobs == {"m_tile": 8}


def test_failed_candidate_scores_infinity(cache):
    cache.append(_rec(2.0, "default"))
    cache.append(_rec(math.inf))
    assert TuningCache(cache.target, path=cache.path).for_workload("sparse:abc")[1].latency_s == (
        math.inf
    )
    assert cache.best("sparse:abc") is None


@pytest.mark.parametrize(
    ("tuned", "expected"),
    [(1.0, True), (1.99, False), (2.5, False)],
    ids=["faster", "within-noise", "slower"],
)
def test_tuned_record_is_used_only_when_faster_than_default(cache, tuned, expected):
    cache.append(_rec(2.0, "default"))
    cache.append(_rec(tuned))
    assert (cache.best("sparse:abc") is not None) == expected


def test_no_default_measured_means_no_tuned_record(cache):
    cache.append(_rec(1.0))
    assert cache.best("sparse:abc") is None


def test_torn_line_is_skipped_with_warning_and_appends_go_on(cache):
    cache.append(_rec(2.0, "default"))
    cache.append(_rec(1.0))
    with open(cache.path, "a") as f:
        f.write('{"kind": "sparse", "workl')  # a writer killed mid-line
    fresh = TuningCache(cache.target, path=cache.path)
    with pytest.warns(TuningCacheWarning, match="skipped 1 unreadable line"):
        assert len(fresh) == 2
    fresh.append(_rec(0.5, m_tile=2))
    with pytest.warns(TuningCacheWarning):
        assert len(TuningCache(cache.target, path=cache.path)) == 3


def test_records_of_other_versions_are_skipped(cache):
    cache.append(_rec(2.0, "default"))
    line = _rec(1.0).to_json() | {"tvm_sparse": "0.0.1"}
    with open(cache.path, "a") as f:
        f.write(json.dumps(line) + "\n")
    fresh = TuningCache(cache.target, path=cache.path)
    with pytest.warns(TuningCacheWarning, match="other tvm / tvm_sparse versions"):
        assert len(fresh) == 1


@pytest.mark.parametrize(
    "first_line",
    [
        "not json at all",
        json.dumps({"format": FORMAT, "format_version": 99, "target": "x"}),
        json.dumps({"format": "someone.else", "format_version": 1, "target": "x"}),
    ],
    ids=["garbage", "future-version", "other-format"],
)
def test_foreign_file_warns_when_reading_and_refuses_appends(cache, first_line):
    cache.path.parent.mkdir(parents=True)
    cache.path.write_text(first_line + "\n" + json.dumps(_rec(1.0).to_json()) + "\n")
    with pytest.warns(TuningCacheWarning, match="ignoring it"):
        assert len(TuningCache(cache.target, path=cache.path)) == 0
    with pytest.raises(TuningCacheError, match=str(cache.path)):
        TuningCache(cache.target, path=cache.path).append(_rec(1.0))


def test_file_of_another_target_is_not_read(cache):
    cache.append(_rec(2.0, "default"))
    arm = resolve_target("arm-cortex-a72").tvm_target()
    other = TuningCache(arm, path=cache.path)
    with pytest.warns(TuningCacheWarning, match="records for target"):
        assert len(other) == 0
    with pytest.raises(TuningCacheError, match="records for target"):
        other.check()


def test_resolve_cache_arguments(tmp_path, target):
    assert resolve_cache(None, target) is None and resolve_cache(False, target) is None
    assert resolve_cache(tmp_path, target).path.parent == tmp_path
    assert resolve_cache(tmp_path / "x.jsonl", target).path == tmp_path / "x.jsonl"
    with TuningCache(target, tmp_path / "ctx") as entered:
        assert resolve_cache(True, target) is entered
    assert resolve_cache(True, target).path.parent != tmp_path / "ctx"
    with pytest.raises(TypeError, match="tuning_cache"):
        resolve_cache(3, target)


@pytest.mark.parametrize(("confirmed", "used"), [(1.5, True), (1.99, False)])
def test_re_measured_winner_decides(cache, confirmed, used):
    cache.append(_rec(2.0, "default"))
    cache.append(_rec(1.0))  # the fastest of many noisy samples
    cache.append(_rec(confirmed, "confirm"))
    best = cache.best("sparse:abc")
    assert (best is not None) == used
    assert best is None or best.source == "confirm"
