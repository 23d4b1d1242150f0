"""Are the compiler's own choices right? What ``compile`` returns against every alternative.

    python benchmarks/decisions.py [--only ffn,models] [--targets x86,x86-avx2] \\
        [--ffn-patterns 2:4,4:8] [--out benchmarks/results] [--name decisions]

Writes ``decisions.json`` and ``decisions.md``. Each case is a pruned model compiled the way a
user compiles it (``sparsity="auto"``, layers timed on this machine, the end-to-end speed check
off so that the compiler's per-layer choices are what is timed) and, beside it, built once per
alternative: dense (``sparsity="off"``) and each candidate kernel forced on every pruned layer
(``{"*": "bsr:16x1"}``, ...). In one fresh process per case, all builds are checked against
PyTorch and timed against each other by the project's timing policy (interleaved rounds); the
row passes when the returned build is within 5% of the fastest and not slower than dense.
Caches start empty (a temporary ``XDG_CACHE_HOME``), so ``compile_s`` is a first compile's (for
the models, each from an empty cache: calibrating the host included);
``recompile_s`` is the same compile again, reading back what the first measured.

- ``ffn``: the BERT-base FFN weight (768 -> 3072, 128 rows) at 50/70/90% in 16x1 and 1x4 blocks,
  unstructured, 2:4 and 4:8. With one layer, "each candidate on every layer" is every per-layer
  choice there is.
- ``models``: ResNet-18 and MobileNetV2 pruned by ``tvm_sparse.prune`` (channel 50%,
  unstructured 90%, 16x1 blocks 90%). Their alternatives apply one kernel to every layer, not
  every per-layer mix.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

import tvm_sparse
from tvm_sparse.measure import block_mask, nm_mask
from tvm_sparse.timing import TimingPolicy, compare

from architectures import MobileNetV2, ResNet18, randomize_batch_norm
from harness import in_fresh_process, max_relative_error, write_results

WITHIN = 0.05
# More rounds than a compile's own checks: the builds are compared with each other, not only
# with dense, and the host's speed drifts.
POLICY = TimingPolicy(min_rounds=15, max_rounds=40, budget_s=10.0, round_ms=30.0)


def _ffn(pattern: str, density: float) -> tuple[torch.nn.Module, torch.Tensor, list[str]]:
    rng = np.random.default_rng(0)
    linear = torch.nn.Linear(768, 3072, bias=False)
    if pattern in ("2:4", "4:8"):
        nm = tuple(int(v) for v in pattern.split(":"))
        mask = nm_mask(3072, 768, nm, rng)
        forced = [f"nm:{pattern}:permute", f"nm:{pattern}:gather", "unstructured"]
    elif pattern == "unstructured":
        mask = rng.random((3072, 768)) < density
        forced = ["unstructured", "bsr:16x1"]
    else:
        block = tuple(int(v) for v in pattern.split("x"))
        mask = block_mask(3072, 768, block, density, rng)
        forced = [f"bsr:{pattern}", "unstructured"] + (["bsr:16x1"] if pattern != "16x1" else [])
    with torch.no_grad():
        linear.weight.mul_(torch.from_numpy(mask.astype("float32")))
    return linear.eval(), torch.randn(128, 768), forced


def _model(arch: str, pattern: str) -> tuple[torch.nn.Module, torch.Tensor, list[str]]:
    torch.manual_seed(0)
    model = randomize_batch_norm(ResNet18() if arch == "ResNet-18" else MobileNetV2()).eval()
    x = torch.randn(1, 3, 224, 224)
    if pattern == "channel":
        tvm_sparse.prune(model, (x,), pattern="channel", sparsity=0.5)
        return model, x, []
    if pattern == "unstructured":
        tvm_sparse.prune(model, (x,), pattern="unstructured", sparsity=0.9)
        return model, x, ["unstructured"]
    tvm_sparse.prune(model, (x,), pattern="block", block_shape=(16, 1), sparsity=0.9)
    return model, x, ["bsr:16x1"]


def _kernels(build) -> list[str]:
    return sorted({r.kernel for r in build.report.rows if r.pattern != "dense"})


def _case(kind: str, a: str, b: float | str):
    return _ffn(a, b) if kind == "ffn" else _model(a, b)


def measure(kind: str, a: str, b, target: str) -> dict:
    """One case in this process: build every alternative, check, time, compare."""
    model, x, forced = _case(kind, a, b)
    if kind == "models":  # a model's first compile on a new host: calibration included
        os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="decisions_model_cache_")
    with torch.no_grad():
        expected = model(x).numpy()
    start = time.perf_counter()
    chosen = tvm_sparse.compile(
        model, target, example_inputs=(x,), verify_speed=False, measure_layers=True
    )
    compile_s = time.perf_counter() - start
    start = time.perf_counter()  # again, as a user's second compile: every layer read back
    again = tvm_sparse.compile(
        model, target, example_inputs=(x,), verify_speed=False, measure_layers=True
    )
    recompile_s = time.perf_counter() - start
    kernels, kernels_again = _kernels(chosen), _kernels(again)
    if kernels_again != kernels:
        print(f"[decisions] {a} {b}: the cached compile chose {kernels_again}", flush=True)
    builds = {"compile": chosen, "dense": tvm_sparse.compile(
        model, target, example_inputs=(x,), sparsity="off", measure_layers=False)}  # fmt: skip
    for choice in forced:
        try:
            builds[choice] = tvm_sparse.compile(
                model, target, example_inputs=(x,), sparsity={"*": choice},
                verify_speed=False, measure_layers=False,
            )  # fmt: skip
        except Exception as err:  # noqa: BLE001 - a forced kernel that cannot build is no alternative
            print(f"[decisions] {a} {b}: {choice} did not build ({err})", flush=True)
    xs = x.numpy()
    error = max_relative_error(list(builds.values()), xs, expected)
    assert error < 1e-3, f"a build differs from PyTorch: {error:.2e}"
    calls = {name: (lambda build=build: build(xs)) for name, build in builds.items()}
    result = compare(calls, reference="dense", policy=POLICY)
    fastest = max(result.speedup, key=result.speedup.get)
    return {
        "ms": result.ms,
        "speedup": result.speedup,
        "fastest": fastest,
        # paired within each round, so that drift cancels; a ratio of the two speedups over
        # dense would add dense's noise to two builds that time alike
        "compile_over_fastest": result.ratio("compile", fastest),
        "kernels": ", ".join(kernels) or "dense",
        "compile_s": compile_s,
        "recompile_s": recompile_s,
        "same_when_cached": kernels_again == kernels,
        # what decided each pruned layer of the returned build, to read a miss against
        "evidence": sorted(
            {f"{r.layer}: {r.kernel} ({r.reason})" for r in chosen.report.rows if r.layer}
        ),
        "error": error,
        "rounds": result.rounds,
    }


FFN_PATTERNS = ("16x1", "1x4", "unstructured", "2:4", "4:8")


def cases(only: list[str], patterns=FFN_PATTERNS) -> list[tuple[str, str, float | str]]:
    out = []
    if "ffn" in only:
        for pattern in patterns:
            densities = (0.5,) if ":" in pattern else (0.5, 0.3, 0.1)
            out += [("ffn", pattern, density) for density in densities]
    if "models" in only:
        for arch in ("ResNet-18", "MobileNetV2"):
            out += [("models", arch, pattern) for pattern in ("channel", "unstructured", "16x1")]
    return out


def _name(kind: str, a: str, b) -> str:
    if kind == "models":
        return f"{a}, {b} pruned"
    if ":" in a:
        return f"FFN 128x768 @ 768x3072, {a}"
    return f"FFN 128x768 @ 768x3072, {1 - b:.0%} zero, {a}" + (" blocks" if "x" in a else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="ffn,models")
    parser.add_argument("--targets", default="x86", help="presets, comma-separated")
    parser.add_argument("--ffn-patterns", default=",".join(FFN_PATTERNS))
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--name", default="decisions", help="stem of the result files")
    args = parser.parse_args()
    os.environ["TVM_SPARSE_VERIFY_SPEED"] = "0"
    # A first compile on this machine: no layer times or tuning records from earlier runs.
    cache = tempfile.TemporaryDirectory(prefix="decisions_cache_")
    os.environ["XDG_CACHE_HOME"] = cache.name
    rows = []
    for target in args.targets.split(","):
        for kind, a, b in cases(args.only.split(","), args.ffn_patterns.split(",")):
            r = in_fresh_process(measure, kind, a, b, target)
            ms = r["ms"]
            best = ms[r["fastest"]]
            row = {
                "case": _name(kind, a, b),
                "target": target,
                "compile_ms": ms["compile"],
                "dense_ms": ms["dense"],
                "fastest": r["fastest"],
                "fastest_ms": best,
                "compile_over_fastest": r["compile_over_fastest"],
                "speedup_over_dense": r["speedup"]["compile"],
                "kernels": r["kernels"],
                "alternatives": ", ".join(f"{n} {v:.3f}" for n, v in ms.items()
                                          if n not in ("compile", "dense")) or "-",
                "compile_s": r["compile_s"],
                "recompile_s": r["recompile_s"],
                "same_when_cached": "yes" if r["same_when_cached"] else "NO",
                "max_rel_error": r["error"],
                "evidence": r["evidence"],
            }  # fmt: skip
            row["passed"] = (
                "yes"
                if row["compile_over_fastest"] <= 1 + WITHIN
                and row["speedup_over_dense"] >= 1 - WITHIN
                else "NO"
            )
            rows.append(row)
            print(f"[decisions] {row}", flush=True)
    columns = [c for c in rows[0] if c != "evidence"]  # in the JSON only: a paragraph per row
    write_results(
        args.name,
        rows,
        columns,
        out_dir=args.out,
        notes="compile: what tvm_sparse.compile returns (sparsity='auto', each pruned matmul "
        "and conv decided by timing its candidates on this machine, a first compile: it also "
        "measures the quick calibration table; end-to-end check off). Alternatives: dense "
        "(sparsity='off') and each kernel "
        "forced on every pruned layer. All builds of a row timed in one process by "
        "tvm_sparse.timing.compare (interleaved rounds; medians in ms). compile_over_fastest: "
        "the median over rounds of compile's time over the fastest's in the same round; "
        "the JSON keeps each pruned layer's evidence. passed: compile is "
        f"within {WITHIN:.0%} of the fastest and not more than {WITHIN:.0%} slower than dense.",
    )


if __name__ == "__main__":
    main()
