"""Static throughput: how fast the hot loop of each compiled kernel runs on a core, predicted by
LLVM's machine-code analyser (``llvm-mca``) from the generated assembly, without the device.

For each kernel of a build, the innermost loops of its code (its parallel bodies included) are
found in the assembly; the loop with the most floating-point work per iteration is the kernel's
hot loop. ``llvm-mca`` predicts its cycles per iteration on the core's scheduling model; its
FLOPs per iteration are counted from the instructions (a fused multiply-add is two FLOPs per
lane). The core's peak is what the same model predicts for a loop of independent multiply-adds
on the widest vectors the target has, so the share of peak does not depend on a data sheet.
GFLOP/s per core use the nominal clock of :data:`CORES`.

What it cannot see: cache misses (every load hits L1), the loops around the hot one, and the
time a kernel spends outside its hot loop; a prediction is an upper bound for compute-bound
kernels and says nothing about memory-bound ones. ``benchmarks/arm_static.py`` measures its
error against this host's clock.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from dataclasses import dataclass

from tvm.target import Target

from .targets.facts import num_cores, vector_lanes
from .targets.host import host_clock_ghz

__all__ = [
    "CORES",
    "CoreModel",
    "KernelThroughput",
    "find_llvm_mca",
    "kernel_throughput",
    "predicted_table",
    "predicted_times",
]


@dataclass(frozen=True)
class CoreModel:
    """A core as ``llvm-mca`` models it."""

    triple: str
    mcpu: str  # the scheduling model llvm-mca uses
    ghz: float  # nominal clock, for GFLOP/s
    note: str = ""


#: Arm cores of the presets. LLVM has no Cortex-A76 model (it falls back to the A57's); the
#: Neoverse-N1 was derived from the A76 and has one (LLVM 17 and newer).
CORES = {
    "cortex-a72": CoreModel("aarch64", "cortex-a72", 1.8, "LLVM's Cortex-A57 model"),
    "cortex-a76": CoreModel("aarch64", "neoverse-n1", 2.4, "LLVM's Neoverse-N1 model"),
    "neoverse-n1": CoreModel("aarch64", "neoverse-n1", 2.5, "LLVM's Neoverse-N1 model"),
}


def core_of(target: Target) -> CoreModel:
    """The core model of an llvm target: a known Arm core, else the target's own ``mcpu``."""
    mcpu = str(target.attrs.get("mcpu", "")) or "generic"
    triple = str(target.attrs.get("mtriple", "")) or "x86_64"
    if mcpu in CORES:
        return CORES[mcpu]
    return CoreModel(triple.split("-")[0], mcpu, host_clock_ghz())


@functools.cache
def find_llvm_mca() -> str | None:
    """The newest ``llvm-mca`` on the PATH (newer LLVMs model more cores), or ``None``."""
    for version in range(30, 13, -1):
        path = shutil.which(f"llvm-mca-{version}")
        if path:
            return path
    return shutil.which("llvm-mca")


# -- assembly -----------------------------------------------------------------------------------

_LABEL = re.compile(r"^([\w.$]+):")
_FUNCTION = re.compile(r"^\s*\.type\s+([\w.$]+),\s*[@%]function")
#: line comments: ``//`` in AArch64 assembly (where ``#`` starts an immediate), ``#`` in x86's
_COMMENTS = {"aarch64": re.compile(r"\s*//.*$"), "x86": re.compile(r"\s*#.*$")}
#: fused multiply-adds (two FLOPs per lane) and the other arithmetic counted (one per lane);
#: max and min (ReLU) are not counted, as no FLOP count of a model counts them
_FMA = re.compile(r"^(v?f(n?m(add|sub|la|ls)))")
_ARITH = re.compile(r"^(v?(add|sub|mul|div)(ps|ss|pd|sd)|f(add|sub|mul|div)\b)")


def _functions(asm: str, arch: str) -> dict[str, list[str]]:
    """Instruction and label lines of each function, in order."""
    comment = _COMMENTS["aarch64" if arch.startswith("aarch64") else "x86"]
    names: set[str] = set()
    for line in asm.splitlines():
        m = _FUNCTION.match(line)
        if m:
            names.add(m.group(1))
    bodies: dict[str, list[str]] = {}
    current = None
    for raw in asm.splitlines():
        line = comment.sub("", raw).rstrip()
        label = _LABEL.match(line)
        if label and label.group(1) in names:
            current = label.group(1)
            bodies[current] = []
            continue
        if current is None or not line.strip():
            continue
        if line.lstrip().startswith(".") and not label:
            if line.strip().startswith(".size"):
                current = None  # the function ends
            continue
        bodies[current].append(line.strip())
    return bodies


def _innermost_loops(body: list[str]) -> list[list[str]]:
    """Bodies of the loops that contain no other loop: a label and a later branch back to it."""
    where = {}
    for i, line in enumerate(body):
        label = _LABEL.match(line)
        if label:
            where[label.group(1)] = i
    edges = []
    for j, line in enumerate(body):
        if _LABEL.match(line):
            continue
        target = line.replace(",", " ").split()[-1]
        if target in where and where[target] < j:
            edges.append((where[target], j))
    loops = []
    for start, end in edges:
        if not any(start <= s and e <= end and (s, e) != (start, end) for s, e in edges):
            loops.append([line for line in body[start : end + 1] if not _LABEL.match(line)])
    return loops


def _lanes(instruction: str) -> int:
    """Float lanes of an instruction's destination register."""
    text = instruction.lower()
    for name, lanes in (("zmm", 16), ("ymm", 8), ("xmm", 4), (".4s", 4), (".2s", 2)):
        if name in text:
            if name.endswith("mm") and re.search(r"\b\w+s[sd]\b", text.split()[0]):
                return 1  # a scalar op on a vector register
            return lanes
    return 1


def flops_per_iteration(loop: list[str]) -> float:
    """FLOPs of one iteration of ``loop``: two per lane of each fused multiply-add, one per lane
    of each other arithmetic instruction."""
    total = 0.0
    for instruction in loop:
        opcode = instruction.split()[0].lower() if instruction.split() else ""
        if _FMA.match(opcode):
            total += 2 * _lanes(instruction)
        elif _ARITH.match(opcode):
            total += _lanes(instruction)
    return total


# -- llvm-mca -----------------------------------------------------------------------------------


def cycles_per_iteration(loop: list[str], core: CoreModel, mca: str | None = None) -> float:
    """``llvm-mca``'s cycles per iteration of ``loop`` (steady state over 200 iterations)."""
    mca = mca or find_llvm_mca()
    if mca is None:
        raise RuntimeError(
            "llvm-mca not found: install Debian's llvm package (llvm-19 models more Arm cores)"
        )
    iterations = 200
    out = subprocess.run(
        [mca, f"-mtriple={core.triple}", f"-mcpu={core.mcpu}", f"-iterations={iterations}"],
        input="\n".join(loop) + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    m = re.search(r"Total Cycles:\s+(\d+)", out.stdout)
    if out.returncode or m is None:
        raise RuntimeError(f"llvm-mca failed on {core.mcpu}: {out.stderr.strip()[:300]}")
    return int(m.group(1)) / iterations


@functools.cache
def peak_flops_per_cycle(core: CoreModel, lanes: int) -> float:
    """FLOPs per cycle the model predicts for independent multiply-adds on ``lanes``-wide
    vectors: the core's peak as the same model sees it."""
    if core.triple.startswith("aarch64"):
        body = [f"fmla v{i}.4s, v20.4s, v21.4s" for i in range(16)]
        body += ["subs x0, x0, #1", "b.ne .Lpeak"]
        per = 8
    else:
        reg = {16: "zmm", 8: "ymm"}.get(lanes, "xmm")
        body = [f"vfmadd231ps %{reg}20, %{reg}21, %{reg}{i}" for i in range(12)]
        body += ["decq %rax", "jne .Lpeak"]
        per = 2 * {16: 16, 8: 8}.get(lanes, 4)
    fmas = len([b for b in body if "fm" in b])
    return fmas * per / cycles_per_iteration(body, core)


# -- kernels ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelThroughput:
    """The hot loop of one kernel as llvm-mca predicts it on one core."""

    kernel: str
    cycles: float  # per iteration
    flops: float  # per iteration
    peak: float  # the core's FLOPs per cycle
    ghz: float

    @property
    def flops_per_cycle(self) -> float:
        return self.flops / self.cycles if self.cycles else 0.0

    @property
    def share_of_peak(self) -> float:
        return self.flops_per_cycle / self.peak if self.peak else 0.0

    @property
    def gflops(self) -> float:
        """Predicted GFLOP/s of one core at the nominal clock."""
        return self.flops_per_cycle * self.ghz


def kernel_throughput(asm: str, target: Target) -> dict[str, KernelThroughput]:
    """The hot loop of every kernel in ``asm`` (an llvm module's assembly for ``target``).

    A parallel body (``__tvm_parallel_lambda``) is counted with the kernel whose code precedes
    it, which is where TVM's code generator emits it. Kernels without floating-point loops
    (copies, transposes) are left out.
    """
    core = core_of(target)
    peak = peak_flops_per_cycle(core, vector_lanes(target))
    owner: dict[str, str] = {}
    kernel = None
    bodies = _functions(asm, core.triple)
    for name in bodies:
        if "parallel_lambda" not in name:
            kernel = re.sub(r"^__tvm_ffi_|_compute_$", "", name)
        owner[name] = kernel or name
    hot: dict[str, list[str]] = {}
    for name, body in bodies.items():
        for loop in _innermost_loops(body):
            best = hot.get(owner[name])
            if flops_per_iteration(loop) > (flops_per_iteration(best) if best else 0.0):
                hot[owner[name]] = loop
    result = {}
    for name, loop in hot.items():
        result[name] = KernelThroughput(
            kernel=name,
            cycles=cycles_per_iteration(loop, core),
            flops=flops_per_iteration(loop),
            peak=peak,
            ghz=core.ghz,
        )
    return result


def predicted_times(compiled) -> list[dict]:
    """Per kernel of a compiled model (``tvm_sparse.compile``'s result for an llvm target): the
    FLOPs its report rows give it, its hot loop's predicted rate, and the time those FLOPs take
    at that rate on every core of the target. A kernel whose report rows give it no FLOPs
    (sparse kernels count their nonzeros, copies none) is listed without a time."""
    target = compiled.preset.tvm_target()
    kernels = kernel_throughput(assembly(compiled.executable), target)
    cores = num_cores(target)
    groups: dict[str, int] = {}
    for r in compiled.report.rows:
        group = r.fused_into or r.name
        groups[group] = groups.get(group, 0) + r.flops
    rows = []
    for name, hot in sorted(kernels.items()):
        # later passes rename a fused function with a suffix (``_prepacked``): the longest
        # group that is the kernel's name or its prefix before an underscore
        matches = [g for g in groups if name == g or name.startswith(g + "_")]
        flops = groups[max(matches, key=len)] if matches else 0
        rate = hot.gflops * 1e9 * cores
        rows.append({
            "kernel": name, "MFLOP": flops / 1e6, "GFLOP/s per core": hot.gflops,
            "share of peak": hot.share_of_peak,
            "predicted ms": flops / rate * 1e3 if flops and rate else None,
        })  # fmt: skip
    return rows


def predicted_table(compiled) -> str:
    """:func:`predicted_times` as a Markdown table, with the core model it used."""
    target = compiled.preset.tvm_target()
    core = core_of(target)
    lines = [
        "| kernel | MFLOP | predicted GFLOP/s per core | share of peak | predicted ms |",
        "|---|---|---|---|---|",
    ]
    total = 0.0
    for row in predicted_times(compiled):
        ms = row["predicted ms"]
        total += ms or 0.0
        lines.append(
            f"| {row['kernel']} | {row['MFLOP']:.2f} | {row['GFLOP/s per core']:.1f} | "
            f"{row['share of peak']:.0%} | {'' if ms is None else f'{ms:.3f}'} |"
        )
    model = f"{core.mcpu}" + (f" ({core.note})" if core.note else "")
    lines += [
        "",
        f"predicted by llvm-mca on {model} at {core.ghz} GHz: {total:.2f} ms in the hot loops "
        "(estimated: every load an L1 hit, loops outside the hot one not counted)",
    ]
    return "\n".join(lines)


def assembly(executable) -> str:
    """The assembly of a ``tvm.compile`` result's kernels (an llvm target's)."""
    module = getattr(executable, "mod", executable)
    for candidate in [module, *module.imports]:
        try:
            text = candidate.inspect_source("s")
        except Exception:  # noqa: BLE001 - not the llvm module; try the next
            continue
        if text and ".text" in text:
            return text
    raise ValueError("no llvm module with assembly in this executable")
