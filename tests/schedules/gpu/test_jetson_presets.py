"""Every reference architecture and zoo model, pruned in each pattern, compiles for every
Jetson preset, and its kernels assemble for the preset's architecture.

The models are the reference architectures of ``benchmarks/architectures.py`` at reduced
width, input size and depth (every layer kind kept) and the test zoo. To keep CI short, all of
them run as one model (:class:`Suite`, one input each) pruned once per pattern and compiled
once per preset; ``sm_87`` code is compiled with ``nvcc`` once per distinct CUDA source (the
Orin Nano and AGX Orin presets differ only in their host CPU, so their device code is the
same), ``sm_72`` code is built with TVM's NVPTX backend and assembled with CUDA 12's
``ptxas`` (see ``cuda_testing``). Running the builds on a GPU is the ``gpu``-marked test.
"""

from __future__ import annotations

import functools
import re
import warnings

import numpy as np
import pytest
import torch
import tvm
import zoo
from cuda_testing import device_ptx, nvptx_build, nvptx_target, skip_reason_sm72
from torch import nn

import tvm_sparse
from benchmarks.architectures import (
    BertEncoder,
    BertFFN,
    ConvNeXt,
    MobileNetV2,
    ResNet18,
    ViT,
    randomize_batch_norm,
)
from tvm_sparse.gpu_resources import cuda_source
from tvm_sparse.targets.cuda_resources import (
    launch_bounds,
    nvcc_arches,
    nvcc_resources,
    ptxas_resources,
)

PRESETS = {"jetson-orin-nano": "sm_87", "jetson-agx-orin": "sm_87", "jetson-xavier-nx": "sm_72"}
#: The presets the matrix compiles: the AGX Orin's device code is the Orin Nano's (checked by
#: ``test_orin_presets_share_their_device_code``), so it would assemble the same kernels again.
MATRIX_PRESETS = ("jetson-orin-nano", "jetson-xavier-nx")
PATTERNS = {
    "channel": {"pattern": "channel", "sparsity": 0.5},
    "16x1": {"pattern": "block", "block_shape": (16, 1), "sparsity": 0.8},
    "2:4": {"pattern": "n:m", "n_m": (2, 4)},
}
DTYPES = ["float32", "float16"]

#: Reference architectures, reduced: ``name -> (factory, input shape)``.
REFERENCE = {
    "resnet18": (lambda: randomize_batch_norm(ResNet18(num_classes=10, width=16)), (1, 3, 32, 32)),
    "mobilenetv2": (
        lambda: randomize_batch_norm(MobileNetV2(num_classes=10, width=0.25, last=128)),
        (1, 3, 32, 32),
    ),
    "convnext": (
        lambda: ConvNeXt(dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), num_classes=10),
        (1, 3, 32, 32),
    ),
    "vit": (
        lambda: ViT(image=32, patch=8, d_model=64, depth=1, heads=4, num_classes=10),
        (1, 3, 32, 32),
    ),
    "bert-encoder": (lambda: BertEncoder(d_model=64, heads=4, d_ff=256, depth=1), (1, 16, 64)),
    "bert-ffn": (lambda: BertFFN(64, 256), (1, 16, 64)),
}
MODELS = [*REFERENCE, *(f"zoo-{name}" for name in sorted(zoo.ZOO))]
#: A kernel's definition in TVM's CUDA C (one without threads has no launch bounds).
_KERNEL = re.compile(r'extern "C" __global__ void(?: __launch_bounds__\(\d+\))? (\w+)\(')


class Suite(nn.Module):
    """Several models as one: input ``i`` goes to model ``i``, their outputs come back as a
    tuple, so that one prune, one import and one compile cover them all."""

    def __init__(self, models: dict[str, nn.Module]):
        super().__init__()
        self.models = nn.ModuleDict({k.replace("-", "_"): m for k, m in models.items()})

    def forward(self, *inputs):
        return tuple(m(x) for m, x in zip(self.models.values(), inputs, strict=True))


def _suite() -> tuple[Suite, tuple[torch.Tensor, ...]]:
    models, inputs = {}, []
    for i, name in enumerate(MODELS):
        torch.manual_seed(i)
        if name in REFERENCE:
            factory, shape = REFERENCE[name]
            models[name] = factory().eval()
            inputs.append(torch.randn(*shape, generator=torch.Generator().manual_seed(i)))
        else:
            models[name], (x,) = zoo.make(name.removeprefix("zoo-"), seed=i)
            inputs.append(x)
    return Suite(models).eval(), tuple(inputs)


@functools.cache
def _pruned(pattern: str) -> tuple[Suite, tuple[torch.Tensor, ...], tvm.IRModule]:
    """The suite pruned in ``pattern`` and imported once (each preset compiles the module)."""
    suite, inputs = _suite()
    tvm_sparse.prune(suite, inputs, **PATTERNS[pattern])
    return suite, inputs, tvm_sparse.frontend.import_model(suite, inputs).mod


@functools.cache
def _compiled(pattern: str, preset: str, dtype: str) -> tvm_sparse.CompiledModel:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a rule passed over: in the report
        return tvm_sparse.compile(_pruned(pattern)[2], preset, dtype=dtype)


@functools.cache
def _nvcc(source: str, arch: str) -> dict:
    """``nvcc`` once per distinct source: the two Orin presets' device code is the same."""
    return nvcc_resources(source, arch)


def _assembled(pattern: str, preset: str, dtype: str) -> dict:
    """Each kernel's resources, assembled for the preset's architecture."""
    arch = PRESETS[preset]
    if arch in nvcc_arches():
        source = cuda_source(_compiled(pattern, preset, dtype).executable)
        return _nvcc(source, arch)
    if arch != "sm_72":
        pytest.skip(f"no nvcc on PATH that targets {arch}")
    if reason := skip_reason_sm72():
        pytest.skip(reason)
    return _nvptx_assembled(pattern, preset, dtype)


@functools.cache
def _nvptx_assembled(pattern: str, preset: str, dtype: str) -> dict:
    cuda = tvm_sparse.targets.get_preset(preset).tvm_target()
    with nvptx_build(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        executable = tvm.compile(
            _pruned(pattern)[2],
            nvptx_target(PRESETS[preset], host=cuda.host),
            relax_pipeline=tvm_sparse.pipeline(preset, dtype=dtype),
        )
    threads = launch_bounds(cuda_source(_compiled(pattern, preset, dtype).executable))
    return ptxas_resources(device_ptx(executable.mod, threads), PRESETS[preset])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("preset", MATRIX_PRESETS)
@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_every_model_compiles_and_assembles_for_every_jetson(pattern, preset, dtype):
    compiled = _compiled(pattern, preset, dtype)
    assert str(compiled.target.attrs["arch"]) == PRESETS[preset]
    report = compiled.report
    rules = {r.kernel.split(" ")[0] for r in report.rows if r.flops}
    assert "unscheduled" not in rules and "" not in rules, report
    if pattern != "channel":  # the pruned matmuls run the CUDA sparse kernels
        sparse = ("bsr_matmul", "nm_matmul", "mma_sp_matmul")
        assert any(report.find(kernel=k) for k in sparse), report
        if pattern == "2:4" and dtype == "float16" and PRESETS[preset] == "sm_87":
            assert report.find(kernel="mma_sp_matmul"), report  # sparse tensor cores
    else:
        assert report.find(kernel="(shrunk)"), report
    kernels = set(_KERNEL.findall(cuda_source(compiled.executable)))
    resources = _assembled(pattern, preset, dtype)
    assert set(resources) == kernels
    for name, r in resources.items():
        assert r.registers <= 255 and r.smem_bytes <= 48 * 1024, (name, r)
        assert r.spill_stores == 0 and r.spill_loads == 0, (name, r)


@pytest.mark.slow
def test_orin_presets_share_their_device_code():
    pattern, dtype = "2:4", "float16"  # the sparse tensor-core path included
    nano, agx = (_compiled(pattern, p, dtype) for p in ("jetson-orin-nano", "jetson-agx-orin"))
    assert cuda_source(nano.executable) == cuda_source(agx.executable)
    assert nano.target.host.attrs["mcpu"] != agx.target.host.attrs["mcpu"]


@pytest.mark.gpu
@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_every_pruned_model_runs_on_this_gpu(pattern):
    suite, inputs, mod = _pruned(pattern)
    compiled = tvm_sparse.compile(mod, tvm.target.Target.from_device(tvm.cuda(0)))
    with torch.no_grad():
        expected = suite(*inputs)
    got = compiled(*[x.numpy() for x in inputs])
    for name, e, g in zip(MODELS, expected, got, strict=True):
        np.testing.assert_allclose(g, e.numpy(), rtol=1e-3, atol=1e-3, err_msg=name)
