"""Arm speed without a board: llvm-mca's prediction for the hot loop of every kernel kind.

    python benchmarks/arm_static.py [--presets arm-cortex-a72,arm-cortex-a76,arm-neoverse-n1]
        [--out benchmarks/results] [--no-host]

Writes ``arm_static.json`` and ``arm_static.md``. Each kernel kind (dense matmul, 3x3 and 1x1
convolution, depthwise on rows of 56 and of 7 pixels, BSR 16x1 / 8x1 / 1x1 at 90% and 2:4) is
built alone through the project's pipeline for each preset, as a model would build it; its hot
loop's cycles per iteration, FLOPs per cycle, GFLOP/s per core at the nominal clock and share
of the core's peak come from :mod:`tvm_sparse.static_throughput`. The same kernels are also
built for this host and timed, so that the prediction's error is known: ``measured /
predicted`` is the time the build takes against what its hot loop alone would take at the
host's clock on every core. ``--no-host`` leaves the host's builds and timings out (the Arm
predictions need no quiet machine).
"""

from __future__ import annotations

import argparse

import numpy as np
import tvm
from tvm import relax

from tvm_sparse.measure import block_mask, nm_mask
from tvm_sparse.pipeline import pipeline
from tvm_sparse.runtime.runner import Runner
from tvm_sparse.static_throughput import assembly, core_of, find_llvm_mca, kernel_throughput
from tvm_sparse.targets import get_preset
from tvm_sparse.targets.facts import num_cores
from tvm_sparse.timing import median_ms

from harness import write_results

PRESETS = ("arm-cortex-a72", "arm-cortex-a76", "arm-neoverse-n1")
M, K, N = 128, 768, 3072  # BERT-base FFN rows


def _matmul(weight: np.ndarray, m: int = M) -> tuple[tvm.IRModule, tuple[int, ...]]:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([m, weight.shape[1]], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(x, relax.const(weight.T.copy())))
        bb.emit_func_output(out)
    return bb.get(), (m, weight.shape[1])


def _conv(x_shape, w_shape, groups: int = 1) -> tuple[tvm.IRModule, tuple[int, ...]]:
    """A conv between channels-last neighbours, as in a model (``ConvertToNHWC`` runs it
    channels-last with no transposes left)."""
    weight = np.random.default_rng(0).standard_normal(w_shape).astype("float32")
    pad = w_shape[2] // 2
    n, c, h, w = x_shape
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([n, h, w, c], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            nchw = bb.emit(relax.op.permute_dims(x, [0, 3, 1, 2]))
            y = relax.op.nn.conv2d(nchw, relax.const(weight), padding=pad, groups=groups)
            y = bb.emit(relax.op.nn.relu(y))
            out = bb.emit_output(relax.op.permute_dims(y, [0, 2, 3, 1]))
        bb.emit_func_output(out)
    return bb.get(), (n, h, w, c)


def _sparse(block: tuple[int, int] | None, nm: tuple[int, int] | None):
    rng = np.random.default_rng(0)
    mask = nm_mask(N, K, nm, rng) if nm else block_mask(N, K, block, 0.1, rng)
    return (rng.standard_normal((N, K)) * mask).astype("float32")


def _cases():
    dense = np.random.default_rng(0).standard_normal((N, K)).astype("float32")
    yield "matmul", *_matmul(dense), "off", 2 * M * N * K
    yield "conv 3x3", *_conv((1, 64, 56, 56), (64, 64, 3, 3)), "off", 2 * 56 * 56 * 64 * 64 * 9
    yield "conv 1x1", *_conv((1, 128, 28, 28), (256, 128, 1, 1)), "off", 2 * 28 * 28 * 256 * 128
    yield "depthwise", *_conv((1, 144, 56, 56), (144, 1, 3, 3), 144), "off", 2 * 56 * 56 * 144 * 9
    # MobileNetV2's last stage: rows of 7 pixels, which the 4-pixel tile does not divide
    yield "depthwise 7x7", *_conv((1, 960, 7, 7), (960, 1, 3, 3), 960), "off", 2 * 49 * 960 * 9
    for name, block, nm, choice in (
        ("BSR 16x1", (16, 1), None, "bsr:16x1"),
        ("BSR 8x1", (8, 1), None, "bsr:8x1"),
        ("BSR 1x1", (1, 1), None, "unstructured"),
        ("N:M 2:4", None, (2, 4), "nm:2:4"),
    ):
        weight = _sparse(block, nm)
        yield name, *_matmul(weight), {"*": choice}, 2 * M * int((weight != 0).sum())


def _build(mod, preset, sparsity):
    target = preset.tvm_target()
    passes = pipeline(preset, sparsity=sparsity, tuning_cache=None, winograd=False)
    return tvm.compile(mod, target, relax_pipeline=passes), target


def _hot(exe, target):
    """The kernel of the build with the most FLOPs per hot-loop iteration."""
    kernels = kernel_throughput(assembly(exe), target)
    return max(kernels.values(), key=lambda k: k.flops) if kernels else None


def run(presets: list[str], out: str, host: bool = True) -> None:
    mca = find_llvm_mca()
    if mca is None:
        raise SystemExit("llvm-mca not found: install Debian's llvm package (llvm-19 preferred)")
    rows = []
    runner = Runner() if host else None
    for case, mod, x_shape, sparsity, flops in _cases():
        for name in [*presets, "x86"] if host else presets:
            preset = get_preset(name)
            exe, target = _build(mod, preset, sparsity)
            hot = _hot(exe, target)
            if hot is None:
                print(f"[arm_static] {case} on {name}: no floating-point loop", flush=True)
                continue
            core = core_of(target)
            row = {
                "kernel": case,
                "preset": name,
                "model": f"{core.mcpu} ({core.note})" if core.note else core.mcpu,
                "hot loop": hot.kernel,
                "cycles/iter": hot.cycles,
                "flop/cycle": hot.flops_per_cycle,
                "GFLOP/s/core": hot.gflops,
                "share of peak": hot.share_of_peak,
            }
            if name == "x86":
                vm = relax.VirtualMachine(runner.load(exe), runner.device)
                x = runner.tensors([np.random.default_rng(0).random(x_shape).astype("float32")])
                ms = median_ms(runner.timed(vm, x))
                cores = num_cores(target)
                predicted_ms = flops / (hot.flops_per_cycle * hot.ghz * 1e9 * cores) * 1e3
                row.update({"measured ms": ms, "predicted ms": predicted_ms,
                            "measured / predicted": ms / predicted_ms})  # fmt: skip
            rows.append(row)
            print(f"[arm_static] {case} on {name}: {hot.share_of_peak:.0%} of peak", flush=True)
    columns = ["kernel", "preset", "model", "cycles/iter", "flop/cycle", "GFLOP/s/core",
               "share of peak", "measured ms", "predicted ms", "measured / predicted"]  # fmt: skip
    notes = (
        f"Predicted by `{mca.rsplit('/', 1)[-1]}` for the hot loop of each kernel (every load an "
        "L1 hit); GFLOP/s per core at the nominal clock of `tvm_sparse.static_throughput.CORES` "
        "(the host's reported clock for x86). `measured / predicted` (x86, this host): the "
        "build's median time against its FLOPs at the hot loop's predicted rate on every core."
    )
    print(write_results("arm_static", rows, columns, out_dir=out, notes=notes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument(
        "--no-host", action="store_true", help="predict the Arm presets only; time nothing here"
    )
    args = parser.parse_args()
    run(args.presets.split(","), args.out, host=not args.no_host)


if __name__ == "__main__":
    main()
