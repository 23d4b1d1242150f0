"""``tvm-sparse``: compile, report and benchmark models from the command line.

The CLI only parses arguments and calls the library.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

__all__ = ["main"]


def _progress(message: str) -> None:
    print(f"[tvm-sparse {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _load_model(path: str) -> Any:
    if path.endswith((".pt2", ".pt")):
        import torch

        try:
            return torch.export.load(path)
        except Exception as err:
            raise SystemExit(f"error: {path!r} is not a torch.export program: {err}") from err
    return path


def _compile(args: argparse.Namespace):
    import tvm_sparse

    _progress(
        f"compiling {args.model} for {args.target} (sparsity={args.sparsity}, dtype={args.dtype})"
    )
    start = time.perf_counter()
    model = tvm_sparse.compile(
        _load_model(args.model),
        args.target,
        sparsity=args.sparsity,
        dynamic_batch=args.dynamic_batch,
        rpc=getattr(args, "rpc", None),
        dtype=args.dtype,
    )
    _progress(f"compiled in {time.perf_counter() - start:.1f} s")
    return model


def _random_inputs(model, dims: dict[str, int]) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    inputs = []
    for spec in model.inputs:
        shape = [d if isinstance(d, int) else dims.get(d, 1) for d in spec.shape]
        if spec.dtype.startswith("float"):
            inputs.append(rng.standard_normal(shape).astype(spec.dtype))
        else:
            inputs.append(rng.integers(0, 8, size=shape).astype(spec.dtype))
    return inputs


def _parse_dims(items: list[str]) -> dict[str, int]:
    dims = {}
    for item in items:
        name, _, value = item.partition("=")
        if not value.isdigit():
            raise SystemExit(f"error: --dim expects NAME=SIZE, got {item!r}")
        dims[name] = int(value)
    return dims


def cmd_compile(args: argparse.Namespace) -> int:
    model = _compile(args)
    path = model.export_library(args.output)
    _progress(f"wrote {path} and {path}.meta.json")
    print(model.report.table())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    model = _compile(args)
    print(model.report.to_json() if args.json else model.report.table(all_ops=args.all))
    if not args.json and _predicts(model, args.predict):
        from .static_throughput import predicted_table

        print()
        print(predicted_table(model))
    return 0


def _predicts(model, asked: bool) -> bool:
    """Predicted kernel times for an llvm target this machine does not run (or when asked),
    where llvm-mca is installed."""
    from .static_throughput import find_llvm_mca
    from .targets import is_host_target
    from .targets.backend import CPU, backend_of

    target = model.preset.tvm_target()
    if backend_of(target) is not CPU or not (asked or not is_host_target(target)):
        return False
    if find_llvm_mca() is None:
        _progress("llvm-mca not found: no predicted kernel times (install Debian's llvm package)")
        return False
    return True


def cmd_bench(args: argparse.Namespace) -> int:
    model = _compile(args)
    inputs = _random_inputs(model, _parse_dims(args.dim))
    _progress(f"measuring {args.repeat} runs")
    stats = model.benchmark(*inputs, repeat=args.repeat)
    rows = [("tvm_sparse", stats)]
    if args.model.endswith(".onnx"):
        from .baselines import time_onnxruntime

        _progress("measuring ONNX Runtime")
        rows.append(("onnxruntime", time_onnxruntime(args.model, inputs, repeat=args.repeat)))
    print("| runtime | median ms | min ms | p90 ms |")
    print("|---|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {s['median_ms']:.3f} | {s['min_ms']:.3f} | {s['p90_ms']:.3f} |")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from .tune import autotune

    result = autotune(
        _load_model(args.model),
        args.target,
        trials=args.trials,
        sparsity=args.sparsity,
        dynamic_batch=args.dynamic_batch,
        cache=args.cache or True,
        rpc=args.rpc,
        kinds=tuple(args.kinds.split(",")),
        max_workers=args.workers,
    )
    print(result.table())
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .kernels import default_cache_path
    from .measure import calibrate
    from .measure.calibrate_host import QUICK_GRID
    from .targets import resolve_target

    target = resolve_target(args.target).tvm_target()
    calibrate(target, rpc=args.rpc, progress=_progress, **(QUICK_GRID if args.quick else {}))
    where = "this machine" if args.rpc is None else f"{args.target} (measured over {args.rpc})"
    print(f"calibration table for {where}: {default_cache_path(target)}")
    return 0


def cmd_targets(_args: argparse.Namespace) -> int:
    from .targets import get_preset, list_presets

    for name in list_presets():
        preset = get_preset(name)
        print(f"{name:18} {preset.pruning.pattern:8} {preset.description}")
    return 0


def cmd_example(args: argparse.Namespace) -> int:
    from .examples import run_example

    result = run_example(target=args.target, progress=_progress)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .targets import COMPUTE_DTYPES, list_presets

    parser = argparse.ArgumentParser(
        prog="tvm-sparse", description="Compile pruned models into fast TVM modules."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def model_command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("model", help="an .onnx file, or a torch.export program saved as .pt2")
        p.add_argument("--target", default="x86", help=f"one of {', '.join(list_presets())}")
        p.add_argument("--sparsity", default="auto", choices=["auto", "off"])
        p.add_argument("--dynamic-batch", action="store_true", help="make dimension 0 dynamic")
        p.add_argument(
            "--dtype",
            default="float32",
            choices=COMPUTE_DTYPES,
            help="compute dtype: float16 / bfloat16 on CUDA targets (matmuls accumulate fp32)",
        )
        return p

    p = model_command("compile", "compile a model into a deployable library")
    p.add_argument("-o", "--output", required=True, help="path of the library to write (.so)")
    p.add_argument("--rpc", help="time the pruned layers on the board: HOST:PORT or HOST:PORT:KEY")
    p.set_defaults(func=cmd_compile)
    p = model_command("report", "print what the compiler does to each op")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--all", action="store_true", help="include ops without FLOPs or weights")
    p.add_argument(
        "--predict",
        action="store_true",
        help="predict kernel times with llvm-mca (default for targets this machine does not run)",
    )
    p.set_defaults(func=cmd_report)
    p = model_command("bench", "compile and measure latency")
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--dim", action="append", default=[], help="size of a dynamic dim, NAME=SIZE")
    p.set_defaults(func=cmd_bench)
    p = model_command("tune", "tune the model's kernels for the target; compile uses the records")
    p.add_argument("--trials", type=int, default=32, help="candidates per workload")
    p.add_argument("--cache", help="cache directory or .jsonl file (default ~/.cache/...)")
    p.add_argument("--rpc", help="measure on boards of an RPC tracker: HOST:PORT:KEY[:DEVICES]")
    p.add_argument("--kinds", default="dense,sparse", help="workloads to tune: dense,sparse")
    p.add_argument("--workers", type=int, default=1, help="parallel builds")
    p.set_defaults(func=cmd_tune)
    p = sub.add_parser("calibrate", help="measure the cost model's table on this machine")
    p.add_argument("--target", default="x86", help="a preset this machine runs, or the board's")
    p.add_argument("--rpc", help="measure on a board: HOST:PORT (RPC server) or HOST:PORT:KEY")
    p.add_argument("--quick", action="store_true", help="the small grid of a first compile")
    p.set_defaults(func=cmd_calibrate)
    p = sub.add_parser("targets", help="list the target presets")
    p.set_defaults(func=cmd_targets)
    p = sub.add_parser("example", help="compile the built-in pruned example and compare speed")
    p.add_argument("--target", default="x86")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=cmd_example)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .frontend import ModelImportError, UnsupportedOperatorError

    try:
        return args.func(args)
    except (ModelImportError, UnsupportedOperatorError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
