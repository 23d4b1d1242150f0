"""NVIDIA GPU benchmark: dense against 2:4 and 16x1-block sparse BERT-base FFN, dense against
half-channel ResNet-18, beside PyTorch on the same GPU.

    benchmarks/gpu.sh                    # the gpu-marked tests, then this benchmark
    python -m benchmarks.gpu [--dtypes float32] [--repeat 50] [--rounds 5] [--out DIR]
    python -m benchmarks.gpu --dry-run   # no GPU: build everything for a Jetson, assemble it

Each case is compiled by ``tvm_sparse.compile`` for this machine's GPU
(``Target.from_device(tvm.cuda(0))``), checked against PyTorch on the same inputs, then timed
beside PyTorch running the same (pruned, dense-stored) model on the GPU, in turns
(``harness.interleave``); the fastest turn's median is each runtime's latency. PyTorch has to
be a CUDA build in the same environment (the project pins a CPU build: on a Jetson install
NVIDIA's JetPack wheel of torch, elsewhere ``pip install torch --index-url
https://download.pytorch.org/whl/cu126``); without one the PyTorch column says so and the
check runs PyTorch on the CPU. ``--dtypes`` lists the dtypes to run (float32 and float16 by
default; fp16 2:4 layers run the ``mma.sp`` kernel on sm_80+).

``--dry-run`` builds every case for ``--preset`` (a Jetson) on this machine, needs no GPU, and
compiles the generated CUDA C with ``nvcc`` (``CompiledModel.gpu_resources``), recording each
build's kernels, registers, spills and occupancy; ``--small`` runs reduced sizes (the test
suite runs ``--dry-run --small``). Writes ``gpu[-dry-run].json`` and ``.md`` under ``--out``
(``benchmarks/results/gpu/<GPU name>`` by default).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import tvm_sparse
from benchmarks.architectures import BertFFN, ResNet18, randomize_batch_norm
from benchmarks.harness import interleave, write_results
from tvm_sparse.baselines import time_callable

#: Agreement with PyTorch, relative to the largest output, per dtype.
TOLERANCE = {"float32": 1e-4, "float16": 2e-2}


@dataclass(frozen=True)
class Case:
    """One model in one pruning pattern: ``prune`` options (``None``: dense)."""

    model: str
    variant: str
    prune: dict | None


CASES = [
    Case("bert-base-ffn", "dense", None),
    Case("bert-base-ffn", "2:4", {"pattern": "n:m", "n_m": (2, 4)}),
    Case(
        "bert-base-ffn",
        "bsr 16x1 90%",
        {"pattern": "block", "block_shape": (16, 1), "sparsity": 0.9},
    ),  # fmt: skip
    Case("resnet18", "dense", None),
    Case("resnet18", "half channels", {"pattern": "channel", "sparsity": 0.5}),
]


#: The dtypes a run compiles each case in (``--dtypes``).
DTYPES = ("float32", "float16")


def _model(name: str, small: bool) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name == "bert-base-ffn":  # 128 tokens, 768 -> 3072 -> 768
        model, shape = (BertFFN(64, 256), (1, 16, 64)) if small else (BertFFN(), (1, 128, 768))
    else:
        width, image = (16, 32) if small else (64, 224)
        model = randomize_batch_norm(ResNet18(num_classes=10 if small else 1000, width=width))
        shape = (1, 3, image, image)
    return model.eval(), torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def torch_cuda() -> str | None:
    """Why PyTorch cannot run on the GPU here, or ``None`` where it can."""
    if not torch.cuda.is_available():
        return (
            f"torch {torch.__version__} has no CUDA (install a CUDA build of torch in this "
            "environment: NVIDIA's JetPack wheel on a Jetson, the cu126 index elsewhere)"
        )
    return None


def gpu_name() -> str:
    import tvm

    device = tvm.cuda(0)
    return str(device.device_name) if device.exist else ""


def run_case(case: Case, dtype: str, args: argparse.Namespace) -> dict[str, Any]:
    """Build, check and (unless a dry run) time one case; its result row."""
    import tvm

    model, x = _model(case.model, args.small)
    if case.prune is not None:
        tvm_sparse.prune(model, (x,), **case.prune)
    target = args.preset if args.dry_run else tvm.target.Target.from_device(tvm.cuda(0))
    start = time.perf_counter()
    compiled = tvm_sparse.compile(model, target, example_inputs=(x,), dtype=dtype)
    row: dict[str, Any] = {
        "model": case.model,
        "variant": case.variant,
        "dtype": dtype,
        "compile_s": time.perf_counter() - start,
        "kernels": ", ".join(sorted({r.kernel for r in compiled.report.rows if r.flops})),
    }
    if args.dry_run:
        return {**row, **_assembled(compiled)}
    reference = model.to(torch.float16) if dtype == "float16" else model
    xt = x.to(torch.float16) if dtype == "float16" else x
    cuda_problem = torch_cuda()
    device = "cpu" if cuda_problem else "cuda"
    reference, xt = reference.to(device), xt.to(device)
    with torch.inference_mode():
        expected = reference(xt).float().cpu().numpy()
    x_np = x.numpy().astype(compiled.inputs[0].dtype)
    got = np.asarray(compiled(x_np), dtype="float32")
    error = float(np.abs(got - expected).max() / np.abs(expected).max())
    if error > TOLERANCE[dtype]:
        raise AssertionError(f"{case.model} {case.variant} {dtype}: relative error {error:.1e}")
    row["max_rel_error"] = error
    measures = {"tvm_sparse": lambda: compiled.benchmark(x_np, repeat=args.repeat)}
    if cuda_problem is None:

        def torch_call():
            with torch.inference_mode():
                reference(xt)
            torch.cuda.synchronize()

        measures["pytorch"] = lambda: time_callable(torch_call, repeat=args.repeat)
    best = interleave(measures, rounds=args.rounds)
    row["tvm_sparse_ms"] = best["tvm_sparse"]
    row["pytorch_ms"] = best.get("pytorch", cuda_problem or "")
    return row


def _assembled(compiled: Any) -> dict[str, Any]:
    """What a dry run records: the build's kernels compiled with nvcc for the preset."""
    rows = compiled.gpu_resources()
    if not rows:
        notes = [n for n in compiled.report.notes if "GPU resources" in n]
        raise RuntimeError(f"the CUDA code was not assembled: {notes}")
    occupancy = [r.warps / r.max_warps for r in rows if r.max_warps]
    return {
        "cuda_kernels": len(rows),
        "max_registers": max(r.registers for r in rows),
        "spilling_kernels": sum(bool(r.spill_stores or r.spill_loads) for r in rows),
        "min_occupancy": min(occupancy) if occupancy else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="build and assemble, no GPU")
    parser.add_argument("--preset", default="jetson-orin-nano", help="the dry run's target")
    parser.add_argument("--small", action="store_true", help="reduced sizes (the tests' run)")
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=None, help="results directory")
    args = parser.parse_args(argv)
    os.environ.setdefault("TVM_SPARSE_GPU_RESOURCES", "1" if args.dry_run else "0")
    name = "" if args.dry_run else gpu_name()
    if not args.dry_run and not name:
        print("no CUDA GPU on this machine: run with --dry-run to build and assemble only")
        return 2
    dtypes = [d for d in args.dtypes.split(",") if d]
    rows = []
    for case in CASES:
        for dtype in dtypes:
            print(f"{case.model} {case.variant} {dtype}", file=sys.stderr, flush=True)
            rows.append(run_case(case, dtype, args))
    out = args.out or os.path.join(
        os.path.dirname(__file__), "results", "gpu", _slug(name or args.preset)
    )
    if args.dry_run:
        columns = ["model", "variant", "dtype", "compile_s", "cuda_kernels", "max_registers",
                   "spilling_kernels", "min_occupancy", "kernels"]  # fmt: skip
        notes = f"Dry run: built for {args.preset} and compiled with nvcc; nothing timed."
    else:
        columns = ["model", "variant", "dtype", "tvm_sparse_ms", "pytorch_ms", "max_rel_error",
                   "compile_s", "kernels"]  # fmt: skip
        notes = f"GPU: {name}. PyTorch: {torch_cuda() or 'CUDA, same GPU'}."
    for row in rows:
        row["gpu"] = name or f"none (dry run for {args.preset})"
    json_path, md_path = write_results(
        "gpu-dry-run" if args.dry_run else "gpu", rows, columns, out_dir=out, notes=notes
    )
    print(f"wrote {json_path} and {md_path}")
    return 0


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "gpu"


if __name__ == "__main__":
    sys.exit(main())
