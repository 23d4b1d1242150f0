"""The compile report: one row per operator, saying what the compiler did to it and why."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

__all__ = ["CompileReport", "OpRecord"]


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
class CompileReport:
    """Per-op rows plus notes for a compiled model; ``str(report)`` is a table.

    ``dtype`` is the compute dtype asked for (``compile(..., dtype=...)``); where it is not
    ``float32`` the table gives each row's own dtype, since some ops stay fp32.
    """

    target: str = ""
    rows: list[OpRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dtype: str = "float32"

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
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict) -> CompileReport:
        rows = [OpRecord(**r) for r in data["rows"]]
        return cls(data["target"], rows, list(data["notes"]), data.get("dtype", "float32"))

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
