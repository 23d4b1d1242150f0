"""RemoteModel over an in-process RPC session (``tvm.rpc.LocalSession``): no device needed.

The same upload / load / stateful-call path runs against the emulated Arm device in
``test_arm_rpc.py``; here the target is this machine, so the RPC plumbing is tested alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zoo
from torch import nn
from tvm import rpc

import tvm_sparse
from tvm_sparse.remote import RemoteModel, to_remote

RTOL, ATOL = 1e-4, 1e-4


class _NestedOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 8)

    def forward(self, x):
        y = self.fc(x)
        return {"logits": y, "pair": (torch.relu(y), y.sum(dim=1))}


@pytest.fixture(scope="module")
def session():
    return rpc.LocalSession()


@pytest.fixture(scope="module")
def nested(session):
    torch.manual_seed(0)
    model = _NestedOutputs().eval()
    x = torch.randn(2, 16)
    compiled = tvm_sparse.compile(model, "x86", example_inputs=(x,))
    return model, x, compiled, compiled.to_remote(session)


def test_remote_call_matches_local_and_pytorch(session):
    model, (x,) = zoo.make("mlp")
    compiled = tvm_sparse.compile(model, "x86", example_inputs=(x,))
    remote = to_remote(compiled, session)
    assert isinstance(remote, RemoteModel) and remote.inputs == compiled.inputs
    got = remote(x)
    assert isinstance(got, torch.Tensor)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(got.numpy(), expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(remote(x.numpy()), compiled(x.numpy()))


def test_remote_keeps_nested_output_structure(nested):
    model, x, compiled, remote = nested
    got = remote(x)
    assert set(got) == {"logits", "pair"} and isinstance(got["pair"], tuple)
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), rtol=RTOL, atol=ATOL)
    as_numpy = remote(x.numpy())
    assert isinstance(as_numpy["pair"][1], np.ndarray)


def test_remote_checks_inputs_like_local(nested):
    _, x, compiled, remote = nested
    for bad in [(x[:1],), (x.double(),), (x, x)]:
        with pytest.raises((TypeError, ValueError)) as local_err:
            compiled(*bad)
        with pytest.raises(type(local_err.value)) as remote_err:
            remote(*bad)
        assert str(remote_err.value) == str(local_err.value)


def test_remote_benchmark(nested):
    _, x, _, remote = nested
    timing = remote.benchmark(x, warmup=1, repeat=3)
    assert timing["repeat"] == 3 and 0 < timing["min_ms"] <= timing["median_ms"]


def test_to_remote_rejects_what_is_not_a_session(nested):
    _, _, compiled, _ = nested
    with pytest.raises(TypeError, match="tvm.rpc.RPCSession"):
        compiled.to_remote(("127.0.0.1", 9090))
