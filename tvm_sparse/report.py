"""The compile report: one row per operator, saying what the compiler did to it and why."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

__all__ = ["CompileReport", "GPUKernelRecord", "OpRecord"]


@dataclass
class OpRecord:
    """What happened to one operator of the model.

    Parameters
    ----------
    name : str
        The Relax binding that holds the op's result (matches IR dumps).
    op : str
        The Relax operator, e.g. ``relax.nn.conv2d``, or the sparse kernel's name.
    input_shapes, output_shape : shapes; symbolic dimensions are strings.
    flops : int
        Multiply-adds count twice; elementwise ops count one per output element.
    weight_bytes : int
        Bytes of constant operands (weights, biases, sparse index arrays).
    kernel : str
        The schedule or kernel that computes it (for fused ops, the fused kernel).
    pattern : str
        The pruned pattern found in its weight (``dense`` when none or no weight).
    reason : str
        Why this kernel and pattern were chosen, including any fallback to dense.
    layer : str
        The pruned layer this row's decision belongs to (the key of a per-layer ``sparsity``
        dict); empty for rows without one.
    speedup : float
        How much faster than dense the evidence that decided a sparse kernel says it is (the
        layer's measured times, or the cost model's estimate); 0 where there is no figure.
    dtype : str
        The dtype the op computes in; ``in->out`` where it changes it (``float16->float32``: a
        matmul on fp16 operands accumulating in fp32). Empty in reports of older versions.
    """

    name: str
    op: str
    input_shapes: list[list[int | str]]
    output_shape: list[int | str]
    flops: int = 0
    weight_bytes: int = 0
    kernel: str = ""
    pattern: str = "dense"
    reason: str = ""
    fused_into: str = ""
    layer: str = ""
    speedup: float = 0.0
    dtype: str = ""


@dataclass
class GPUKernelRecord:
    """What one CUDA kernel of the build takes on the GPU, as NVIDIA's assembler reports it
    (:mod:`tvm_sparse.targets.cuda_resources`).

    Parameters
    ----------
    kernel : str
        The kernel's symbol (the fused function's name with ``_kernel``).
    arch : str
        The architecture it was assembled for (``sm_87``).
    registers, spill_stores, spill_loads, smem_bytes, threads : int
        Registers per thread, spilled bytes stored and loaded, static shared memory and
        threads per block (0 where unknown).
    warps, max_warps : int
        Estimated resident warps per SM and the SM's maximum (0 where threads are unknown).
    limited_by : str
        What limits the resident warps (``registers limit``...).
    """

    kernel: str
    arch: str
    registers: int
    spill_stores: int = 0
    spill_loads: int = 0
    smem_bytes: int = 0
    threads: int = 0
    warps: int = 0
    max_warps: int = 0
    limited_by: str = ""


@dataclass
class CompileReport:
    """Per-op rows plus notes for a compiled model; ``str(report)`` is a table.

    ``dtype`` is the compute dtype asked for (``compile(..., dtype=...)``); where it is not
    ``float32`` the table gives each row's own dtype, since some ops stay fp32.

    ``gpu_kernels`` holds, for CUDA builds, each kernel's registers, spills, shared memory and
    occupancy, where this machine has the CUDA toolchain for the architecture (the notes say
    so where it has not).
    """

    target: str = ""
    rows: list[OpRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dtype: str = "float32"
    gpu_kernels: list[GPUKernelRecord] = field(default_factory=list)

    @property
    def total_flops(self) -> int:
        return sum(r.flops for r in self.rows)

    @property
    def total_weight_bytes(self) -> int:
        return sum(r.weight_bytes for r in self.rows)

    def find(self, *, op: str | None = None, kernel: str | None = None) -> list[OpRecord]:
        """Rows whose op or kernel contains the given text."""
        return [
            r
            for r in self.rows
            if (op is None or op in r.op) and (kernel is None or kernel in r.kernel)
        ]

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "dtype": self.dtype,
            "total_flops": self.total_flops,
            "total_weight_bytes": self.total_weight_bytes,
            "rows": [asdict(r) for r in self.rows],
            "notes": list(self.notes),
            "gpu_kernels": [asdict(k) for k in self.gpu_kernels],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict) -> CompileReport:
        return cls(
            data["target"],
            [OpRecord(**r) for r in data["rows"]],
            list(data["notes"]),
            data.get("dtype", "float32"),
            [GPUKernelRecord(**k) for k in data.get("gpu_kernels", [])],
        )

    def table(self, *, all_ops: bool = False) -> str:
        """A Markdown table; by default ops without FLOPs or weights (reshapes) are left out."""
        header = ["op", "name", "shapes", "MFLOP", "weight KiB", "kernel", "pattern", "reason"]
        per_row_dtype = self.dtype != "float32"
        if per_row_dtype:
            header.insert(3, "dtype")
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in self.rows:
            if not all_ops and r.flops == 0 and r.weight_bytes == 0:
                continue
            shapes = " ".join(_shape(s) for s in r.input_shapes) + " -> " + _shape(r.output_shape)
            cells = [
                r.op.removeprefix("relax."),
                r.name,
                shapes,
                f"{r.flops / 1e6:.2f}",
                f"{r.weight_bytes / 1024:.1f}",
                r.kernel + (f" ({r.fused_into})" if r.fused_into else ""),
                r.pattern,
                r.reason,
            ]
            if per_row_dtype:
                cells.insert(3, r.dtype)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(
            f"target {self.target}, dtype {self.dtype}{_DTYPE_NOTE.get(self.dtype, '')}: "
            f"{len(self.rows)} ops, {self.total_flops / 1e6:.1f} MFLOP, "
            f"{self.total_weight_bytes / 1024:.1f} KiB of weights"
        )
        lines.extend(f"note: {n}" for n in self.notes)
        if self.gpu_kernels:
            lines += ["", self.gpu_table()]
        return "\n".join(lines)

    def gpu_table(self) -> str:
        """A Markdown table of :attr:`gpu_kernels`: registers, spills, shared memory, threads
        per block and estimated occupancy per kernel."""
        header = ["kernel", "arch", "registers", "spill st/ld B", "smem B", "threads", "occupancy"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for k in self.gpu_kernels:
            occupancy = (
                f"{k.warps}/{k.max_warps} warps ({k.warps / k.max_warps:.0%}, {k.limited_by})"
                if k.max_warps
                else "unknown block size"
            )
            cells = [k.kernel, k.arch, str(k.registers), f"{k.spill_stores}/{k.spill_loads}",
                     str(k.smem_bytes), str(k.threads or "?"), occupancy]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


_LOW_PRECISION = (
    " (matmuls and convs accumulate in float32; softmax, reductions and the sparse kernels "
    "run float32; the model's inputs and outputs keep their dtypes)"
)
_DTYPE_NOTE = {"float16": _LOW_PRECISION, "bfloat16": _LOW_PRECISION}


def _shape(shape: list[int | str]) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"
