"""``tvm-sparse tune`` parses its arguments and calls ``tvm_sparse.tune.autotune``."""

from __future__ import annotations

import pytest

import tvm_sparse.tune
from tvm_sparse.cli import main
from tvm_sparse.tune import RPCTracker, TuneResult


def test_tune_command_calls_autotune(monkeypatch, tmp_path, capsys):
    calls = {}

    def fake_autotune(model, target, **kwargs):
        calls.update(model=model, target=target, **kwargs)
        return TuneResult(target=str(target), cache_path=str(tmp_path))

    monkeypatch.setattr(tvm_sparse.tune, "autotune", fake_autotune)
    argv = ["tune", "m.onnx", "--target", "x86", "--trials", "8", "--cache", str(tmp_path)]
    argv += ["--rpc", "127.0.0.1:9190:rasp:2", "--kinds", "sparse"]
    assert main(argv) == 0
    assert calls["model"] == "m.onnx" and calls["trials"] == 8 and calls["kinds"] == ("sparse",)
    assert calls["cache"] == str(tmp_path) and calls["rpc"] == "127.0.0.1:9190:rasp:2"
    assert "candidates measured" in capsys.readouterr().out


def test_rpc_tracker_parsing():
    assert RPCTracker.parse("h:9190:key") == RPCTracker("h", 9190, "key")
    assert RPCTracker.parse("h:9190:key:3").devices == 3
    with pytest.raises(ValueError, match="HOST:PORT:KEY"):
        RPCTracker.parse("h:key")


def test_autotune_validates_arguments():
    with pytest.raises(ValueError, match="valid kinds"):
        tvm_sparse.tune.autotune(None, "x86", kinds=("conv",))
    with pytest.raises(ValueError, match="trials"):
        tvm_sparse.tune.autotune(None, "x86", trials=0)
    with pytest.raises(ValueError, match="needs a cache"):
        tvm_sparse.tune.autotune(None, "x86", cache=None)
