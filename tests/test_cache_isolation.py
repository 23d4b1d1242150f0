"""The test session keeps every cache of the library out of the user's home (tests/conftest.py
points ``XDG_CACHE_HOME`` at a temporary directory), and the cache root follows XDG."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tvm_sparse._paths import cache_root
from tvm_sparse.kernels import default_cache_path
from tvm_sparse.targets import resolve_target
from tvm_sparse.tune import default_cache_dir
from tvm_sparse.tune.cache import resolve_cache


def test_default_caches_resolve_under_the_session_temp_dir():
    session = Path(os.environ["XDG_CACHE_HOME"])
    assert session.is_relative_to(Path(tempfile.gettempdir()))
    target = resolve_target("x86").tvm_target()
    paths = [
        cache_root(),
        default_cache_dir(),
        default_cache_path(target),
        resolve_cache(True, target).path,  # what compile and autotune use by default
    ]
    for path in paths:
        assert path.is_relative_to(session), path
        assert not path.is_relative_to(Path.home() / ".cache"), path


def test_cache_root_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "tvm_sparse"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for unusable in ("", "relative/dir"):  # the XDG specification says to ignore these
        monkeypatch.setenv("XDG_CACHE_HOME", unusable)
        assert cache_root() == tmp_path / "home" / ".cache" / "tvm_sparse"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == tmp_path / "home" / ".cache" / "tvm_sparse"
