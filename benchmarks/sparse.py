"""Sparse-kernel benchmark: a BERT-base FFN linear layer, pruned, against dense builds.

Run ``python benchmarks/sparse.py``; writes ``benchmarks/results/sparse.json`` and
``benchmarks/results/sparse.md``. Every number of a row is measured in this one process, so the
ratios hold even on a shared, noisy host (absolute times do not).

Columns: tvm_sparse sparse (``RewriteToSparse`` forced to the pattern, then
``tvm_sparse.pipeline``), tvm_sparse dense (``sparsity="off"``), PyTorch dense, ONNX Runtime
dense; all on the same masked weights.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import tvm
from tvm import relax

import tvm_sparse
from tvm_sparse.kernels._measure import block_mask
from tvm_sparse.passes.detect_sparsity import DetectSparsity
from tvm_sparse.passes.rewrite_to_sparse import DECISIONS_ATTR, RewriteToSparse
from tvm_sparse.targets import get_preset

TARGET = "x86"  # the host CPU preset
RESULTS = Path(__file__).parent / "results"


def _cases() -> list[dict]:
    cases = []
    for rows, pattern, choice in [
        (128, (16, 1), "bsr:16x1"),
        (128, (1, 4), "bsr:1x4"),
        (128, "unstructured", "unstructured"),
        (1, (16, 1), "bsr:16x1"),
        (1, "unstructured", "unstructured"),
    ]:
        name = pattern if isinstance(pattern, str) else f"{pattern[0]}x{pattern[1]} blocks"
        cases.append(
            {
                "name": f"FFN {rows}x768 @ 768x3072, 90% {name}",
                "m": rows,
                "pattern": pattern,
                "choice": choice,
            }
        )
    return cases


def _weight(pattern, n: int, k: int, density: float, rng) -> np.ndarray:
    if pattern == "unstructured":
        linear = torch.nn.Linear(k, n, bias=False)
        import torch.nn.utils.prune as prune

        prune.l1_unstructured(linear, "weight", amount=1 - density)
        return linear.weight.detach().numpy().astype("float32")
    return (rng.standard_normal((n, k)) * block_mask(n, k, pattern, density, rng)).astype("float32")


def _module(weight: np.ndarray, m: int) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((m, weight.shape[1]), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(x, relax.op.permute_dims(relax.const(weight))))
        bb.emit_func_output(out)
    return bb.get()


def _time_vm(mod: tvm.IRModule, target, x: np.ndarray) -> float:
    exe = tvm.compile(mod, target, relax_pipeline=tvm_sparse.pipeline(target, sparsity="off"))
    dev = tvm.cpu()
    vm = relax.VirtualMachine(exe, dev)
    evaluator = vm.time_evaluator("main", dev, number=10, repeat=7, min_repeat_ms=50)
    return float(min(evaluator(tvm.runtime.tensor(x, dev)).results))


def _time_torch(weight: np.ndarray, x: np.ndarray) -> float:
    torch.set_num_threads(2)
    w, xt = torch.from_numpy(weight), torch.from_numpy(x)
    best = float("inf")
    with torch.no_grad():
        for _ in range(5):
            torch.nn.functional.linear(xt, w)
        for _ in range(7):
            start, count = time.perf_counter(), 0
            while time.perf_counter() - start < 0.05:
                torch.nn.functional.linear(xt, w)
                count += 1
            best = min(best, (time.perf_counter() - start) / count)
    return best


def _time_ort(weight: np.ndarray, x: np.ndarray) -> float | None:
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "wt"], ["y"])],
        "ffn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [x.shape[0], weight.shape[0]])],
        [numpy_helper.from_array(np.ascontiguousarray(weight.T), "wt")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(
        onnx._serialize(model) if hasattr(onnx, "_serialize") else model.SerializeToString(),
        options,
        providers=["CPUExecutionProvider"],
    )
    best = float("inf")
    for _ in range(5):
        session.run(None, {"x": x})
    for _ in range(7):
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < 0.05:
            session.run(None, {"x": x})
            count += 1
        best = min(best, (time.perf_counter() - start) / count)
    return best


def run_case(case: dict, target, density: float = 0.1) -> dict:
    rng = np.random.default_rng(0)
    n, k, m = 3072, 768, case["m"]
    weight = _weight(case["pattern"], n, k, density, rng)
    x = rng.standard_normal((m, k)).astype("float32")
    mod = DetectSparsity()(relax.transform.FoldConstant()(_module(weight, m)))
    sparse_mod = RewriteToSparse(target, sparsity={"*": case["choice"]})(mod)
    auto_mod = RewriteToSparse(target, sparsity="auto")(mod)
    decision = dict(next(iter(auto_mod["main"].attrs[DECISIONS_ATTR].values())))
    flops = 2.0 * m * n * k
    row = {
        "case": case["name"],
        "density": float((weight != 0).mean()),
        "auto_decision": {str(a): str(b) for a, b in decision.items()},
        "tvm_sparse_sparse_s": _time_vm(sparse_mod, target, x),
        "tvm_sparse_dense_s": _time_vm(mod, target, x),
        "pytorch_dense_s": _time_torch(weight, x),
        "onnxruntime_dense_s": _time_ort(weight, x),
    }
    row["sparse_gflops_effective"] = flops * row["density"] / row["tvm_sparse_sparse_s"] / 1e9
    row["speedup_vs_tvm_dense"] = row["tvm_sparse_dense_s"] / row["tvm_sparse_sparse_s"]
    row["speedup_vs_pytorch"] = row["pytorch_dense_s"] / row["tvm_sparse_sparse_s"]
    return row


def cnn_case(target) -> dict | None:
    """Hook: ResNet-18-like CNN with half its channels zeroed, through ``tvm_sparse.compile``.

    Filled in once ``ShrinkPrunedChannels`` and ``tvm_sparse.compile`` are complete; returns a
    row shaped like :func:`run_case`'s, or ``None`` to skip.
    """
    return None


def _markdown(rows: list[dict]) -> str:
    def ms(v):
        return "n/a" if v is None else f"{v * 1e3:.3f}"

    lines = [
        "| case | tvm_sparse sparse (ms) | tvm_sparse dense (ms) | PyTorch dense (ms) "
        "| ORT dense (ms) | sparse GFLOP/s | vs tvm dense | vs PyTorch | auto decision |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {ms(r['tvm_sparse_sparse_s'])} | {ms(r['tvm_sparse_dense_s'])} "
            f"| {ms(r['pytorch_dense_s'])} | {ms(r['onnxruntime_dense_s'])} "
            f"| {r['sparse_gflops_effective']:.1f} | {r['speedup_vs_tvm_dense']:.1f}x "
            f"| {r['speedup_vs_pytorch']:.1f}x | {r['auto_decision']['kernel']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    target = get_preset(TARGET).tvm_target()
    rows = [run_case(case, target) for case in _cases()]
    cnn = cnn_case(target)
    if cnn is not None:
        rows.append(cnn)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sparse.json").write_text(
        json.dumps({"target": str(target), "rows": rows}, indent=1)
    )
    table = _markdown(rows)
    (args.out / "sparse.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
