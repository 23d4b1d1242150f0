"""Per-layer evidence: one pruned layer's candidate kernels, built and timed on the device.

The first source of evidence ``RewriteToSparse`` asks for a layer. For a pruned matmul it builds
the layer alone, once per candidate (dense, and the sparse kernels the cost model ranks
first), with the project's own pipeline and the layer's real weight, so that the index arrays,
the padding of blocks and the schedule are those of the model; then times the builds against
each other by the project's timing policy (:func:`tvm_sparse.timing.compare`: interleaved
rounds, a 5% margin under which dense wins). Results are cached under
``$XDG_CACHE_HOME/tvm_sparse/layers``, keyed by the machine, the target, the activation shape
and the weight's nonzero pattern (the values do not change a kernel's time), so that a second
compile of the model reads them back.

A convolution is built between the channels-last layouts of its neighbours in a CPU build,
so that a sparse conv (which runs channels-first) pays the transposes it pays in the model.
``RewriteToWinograd`` asks the same way whether a dense 3x3 conv runs as the Winograd kernel
(its time does not depend on the weight's values, so one record serves every layer of a
shape), and ``ShrinkPrunedChannels`` whether a shrunk layer runs faster with zero channels
kept up to a multiple of the SIMD width. The device is this machine, or a board behind a TVM
RPC session (:class:`~tvm_sparse.runtime.runner.Runner`); a target neither runs is decided by the
calibration table and the stated rules.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm import relax
from tvm.target import Target

from ._paths import cache_root
from .kernels.cost_model import KERNEL_REVISION
from .passes._epilogue import activation_call
from .runtime.runner import Runner
from .targets.host import machine_key
from .timing import TimingPolicy, compare

__all__ = ["LayerTimer", "LayerTiming"]

#: Written into cache records; a record of another version is measured again.
FORMAT_VERSION = 7  # 7: weights cycled through more than a core's L2, as in a model

#: Bytes of weights a layer's build cycles through: copies of the weight, each applied to the
#: same input, until they exceed the L2 of the cores this project targets (0.5-2 MiB), so that
#: each call reads its weight from the last-level cache as a layer in a model does. Timed
#: alone and repeated, a small layer keeps its weight in L2, which favours the kernels that
#: read weights less regularly (N:M's index gathers) over the dense GEMM's packed panels.
_CYCLED_WEIGHT_BYTES = 4 << 20
_MAX_COPIES = 16


def _copies(layer: _Layer) -> int:
    """Copies of a matmul's weight to cycle through; one for a conv, whose activations (read
    once per output channel block) weigh more than its weight."""
    if layer.op != "matmul":
        return 1
    return int(min(max(-(-_CYCLED_WEIGHT_BYTES // max(layer.weight.nbytes, 1)), 1), _MAX_COPIES))


@dataclasses.dataclass(frozen=True)
class _Layer:
    op: str  # "matmul", "conv2d" or "winograd" (a channels-last 3x3 conv)
    x_shape: tuple[int, ...]
    weight: np.ndarray  # (out, in) for a matmul, OIHW for a conv2d, HWIO for "winograd"
    attrs: tuple = ()  # a conv2d's strides, padding, dilation
    epilogue: tuple[str, ...] = ()  # a matmul's bias add and activation (Relax op names)


@dataclasses.dataclass(frozen=True)
class LayerTiming:
    """Milliseconds per call of each candidate of one layer, and the one chosen.

    ``winner`` is ``"dense"`` unless a sparse candidate beat dense by more than the timing
    policy's margin; ``cached`` says whether the numbers were read back from an earlier compile.
    """

    ms: dict[str, float]
    winner: str
    rounds: int
    cached: bool = False
    device: str = "this machine"
    epilogue: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        with_ops = ", ".join(op.removeprefix("relax.").removeprefix("nn.") for op in self.epilogue)
        return (
            f"measured on {self.device}"
            + (f" with its {with_ops}" if with_ops else "")
            + (" (cached)" if self.cached else "")
        )

    def describe(self) -> str:
        times = ", ".join(f"{name} {ms:.3f} ms" for name, ms in self.ms.items())
        return f"{self.where}: {times}"


class LayerTimer:
    """Builds and times the candidates of single layers for ``target`` on the runner's device.

    Parameters
    ----------
    target : tvm.target.Target
        A target this machine runs (see :func:`tvm_sparse.targets.is_host_target`), or the
        runner's board.
    cache_dir : str | os.PathLike, optional
        Where results are kept; ``$XDG_CACHE_HOME/tvm_sparse/layers`` by default.
    policy : TimingPolicy, optional
        Rounds, budget and margin of each layer's comparison.
    budget_s : float
        Seconds of building and timing one compile may spend on layers; once spent, the
        remaining layers fall back to the calibration table (their reasons say so).
    runner : tvm_sparse.runtime.runner.Runner, optional
        Where the builds run: this machine by default, or a board over TVM RPC (then timed
        by the board's clock, and cached under the board's name).
    fast_math : bool
        Whether the model is compiled with fast math: a layer's GELU or tanh is then timed
        as the polynomial the model computes (fused into a sparse kernel's stores).
    """

    def __init__(
        self,
        target: Target,
        *,
        cache_dir: str | os.PathLike | None = None,
        policy: TimingPolicy | None = None,
        budget_s: float = 60.0,
        runner: Runner | None = None,
        fast_math: bool = True,
    ) -> None:
        self.target = target
        self.fast_math = fast_math
        self.runner = runner or Runner()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else cache_root() / "layers"
        self.policy = policy or TimingPolicy(budget_s=1.5)
        self.budget_s = budget_s
        self.spent_s = 0.0
        self.measured = 0
        self._dense: dict[tuple, Any] = {}  # dense builds by shape, reused across layers

    @property
    def exhausted(self) -> bool:
        return self.spent_s >= self.budget_s

    def matmul(
        self,
        x_shape: tuple[int, ...],
        weight: np.ndarray,
        candidates: list[str],
        epilogue: tuple[str, ...] = (),
    ) -> LayerTiming | None:
        """Time ``x @ weight.T`` (``weight`` is ``(out, in)``) as ``"dense"`` and as each of
        ``candidates`` (sparsity choices such as ``"bsr:16x1"``, ``"unstructured"``,
        ``"nm:2:4"``), followed by ``epilogue``: ``"bias"`` (an add of a constant per output)
        and elementwise ops by Relax name (``"relax.nn.gelu"``), as the layer runs in the
        model: a dense matmul computes them in its own loop, a sparse kernel leaves them to a
        pass of their own over its output. ``None`` when the budget is spent or a candidate
        did not build (with a warning): the caller falls back to the calibration table."""
        layer = _Layer("matmul", tuple(x_shape), weight, epilogue=tuple(epilogue))
        return self._time(layer, candidates)

    def conv2d(
        self,
        x_shape: tuple[int, int, int, int],
        weight: np.ndarray,
        *,
        strides: tuple[int, int],
        padding: tuple[int, ...],
        dilation: tuple[int, int],
        candidates: list[str],
    ) -> LayerTiming | None:
        """Time an ``NCHW`` / ``OIHW`` conv2d (``weight`` 4-D) as ``"dense"`` and as each of
        ``candidates``, between the channels-last layouts of its neighbours in a CPU build:
        the dense conv runs channels-last, a sparse one pays the transposes it pays in the
        model. ``None`` as for :meth:`matmul`."""
        attrs = (tuple(strides), tuple(padding), tuple(dilation))
        return self._time(_Layer("conv2d", tuple(x_shape), weight, attrs), candidates)

    def widths(
        self,
        x_shape: tuple[int, ...],
        weight: np.ndarray,
        wanted: int,
        *,
        conv: tuple | None = None,
    ) -> LayerTiming | None:
        """Time a dense matmul (``weight`` 2-D) or conv2d (``weight`` OIHW, ``conv`` its
        strides, padding and dilation) as it is (``"dense"``) and with ``wanted`` output
        channels (``"rounded:<wanted>"``): whether a shrunk layer keeps zero channels up to a
        count its schedule vectorises better. ``None`` as for :meth:`matmul`."""
        layer = (
            _Layer("matmul", tuple(x_shape), weight)
            if conv is None
            else _Layer("conv2d", tuple(x_shape), weight, tuple(tuple(a) for a in conv))
        )
        return self._time(layer, [f"rounded:{wanted}"])

    def winograd(
        self, x_shape: tuple[int, int, int, int], weight_shape: tuple[int, int, int, int]
    ) -> LayerTiming | None:
        """Time an ``NHWC`` / ``HWIO`` 3x3 stride-1 conv as ``"dense"`` (the direct conv) and
        as ``"winograd"`` (``RewriteToWinograd``'s kernel). ``None`` as for :meth:`matmul`."""
        weight = np.ones(weight_shape, "float32")  # the time depends on the shape alone
        return self._time(_Layer("winograd", tuple(x_shape), weight), ["winograd"])

    def _time(self, layer: _Layer, candidates: list[str]) -> LayerTiming | None:
        names = ["dense", *[c for c in candidates if c != "dense"]]
        key = self._key(layer, names)
        cached = self._read(key, names, layer.epilogue)
        if cached is not None:
            return cached
        if self.exhausted:
            return None
        start = time.perf_counter()
        try:
            calls = {}
            for name in names:
                # the dense build does not depend on the weight's values: one per shape
                shape_key = (layer.op, layer.x_shape, layer.weight.shape, layer.attrs,
                             layer.epilogue)  # fmt: skip
                if name == "dense" and shape_key in self._dense:
                    calls[name] = self._dense[shape_key]
                    continue
                calls[name] = self._build(layer, name)
                if name == "dense":
                    self._dense[shape_key] = calls[name]
            result = compare(calls, reference="dense", policy=self.policy)
            copies = _copies(layer)  # each call ran the layer this many times
            result.ms = {name: ms / copies for name, ms in result.ms.items()}
            result.round_ms = {name: [t / copies for t in v] for name, v in result.round_ms.items()}
        except Exception as err:  # noqa: BLE001 - a failed measurement falls back, it never stops a compile
            warnings.warn(
                f"timing the candidates {names} of a {layer.op} of weight {layer.weight.shape} "
                f"failed ({type(err).__name__}: {err}); the calibration table decides it",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        finally:
            self.spent_s += time.perf_counter() - start
        self.measured += 1
        timing = LayerTiming(ms=result.ms, winner=result.winner, rounds=result.rounds,
                             device=self.runner.name, epilogue=layer.epilogue)  # fmt: skip
        self._write(key, timing)
        return timing

    # -- building ---------------------------------------------------------------------------

    def _build(self, layer: _Layer, choice: str):
        from .pipeline import pipeline

        bb = relax.BlockBuilder()
        weight = layer.weight
        if choice.startswith("rounded:"):  # the dense layer with more output channels
            rows = int(choice.split(":")[1]) - weight.shape[0]
            extra = np.random.default_rng(0).standard_normal((rows, *weight.shape[1:]))
            weight, choice = np.concatenate([weight, extra.astype(weight.dtype)]), "dense"
        if layer.op == "matmul":
            copies = _copies(layer)  # by the layer's weight, not the rounded one
            x = relax.Var("x", relax.TensorType(list(layer.x_shape), "float32"))
            bias = np.random.default_rng(1).standard_normal(weight.shape[0]).astype("float32")
            with bb.function("main", [x]):
                with bb.dataflow():
                    outs = []
                    for _ in range(copies):  # each its own constant: its own memory
                        y = bb.emit(relax.op.matmul(x, relax.const(np.ascontiguousarray(weight.T))))
                        for op in layer.epilogue:
                            if op == "bias":
                                y = bb.emit(relax.op.add(y, relax.const(bias.copy())))
                            else:
                                y = bb.emit(activation_call(op, y))
                        outs.append(y)
                    out = bb.emit_output(relax.Tuple(outs) if copies > 1 else outs[0])
                bb.emit_func_output(out)
            x_shape = layer.x_shape
            options = {"sparsity": {"*": choice}}
        elif layer.op == "conv2d":
            n, c, h, w_ = layer.x_shape
            x_shape = (n, h, w_, c)
            strides, padding, dilation = layer.attrs
            x = relax.Var("x", relax.TensorType(list(x_shape), "float32"))
            with bb.function("main", [x]):
                with bb.dataflow():
                    nchw = bb.emit(relax.op.permute_dims(x, [0, 3, 1, 2]))
                    y = bb.emit(relax.op.nn.conv2d(
                        nchw, relax.const(np.ascontiguousarray(weight)), strides=strides,
                        padding=padding, dilation=dilation, out_dtype="float32"))  # fmt: skip
                    out = bb.emit_output(relax.op.permute_dims(y, [0, 2, 3, 1]))
                bb.emit_func_output(out)
            options = {"sparsity": {"*": choice}}
        elif layer.op == "winograd":
            x_shape = layer.x_shape
            x = relax.Var("x", relax.TensorType(list(x_shape), "float32"))
            weight = np.random.default_rng(0).standard_normal(layer.weight.shape)
            w = relax.const(weight.astype("float32"))
            with bb.function("main", [x]):
                with bb.dataflow():
                    out = bb.emit_output(relax.op.nn.conv2d(
                        x, w, padding=(1, 1), data_layout="NHWC", kernel_layout="HWIO",
                        out_dtype="float32"))  # fmt: skip
                bb.emit_func_output(out)
            options = {"sparsity": "off", "winograd": choice == "winograd"}
        passes = pipeline(self.target, tuning_cache=None, fast_math=self.fast_math, **options)
        exe = tvm.compile(bb.get(), self.target, relax_pipeline=passes)
        runner = self.runner
        vm = relax.VirtualMachine(runner.load(exe), runner.device)
        xin = runner.tensors([np.random.default_rng(0).standard_normal(x_shape).astype("float32")])
        return runner.timed(vm, xin)

    # -- cache ------------------------------------------------------------------------------

    def _key(self, layer: _Layer, names: list[str]) -> str:
        digest = hashlib.sha256()
        for part in (
            f"v{FORMAT_VERSION}",
            f"kernels {KERNEL_REVISION}",
            str(self.target),
            self.runner.board or machine_key(),
            layer.op,
            repr(layer.x_shape),
            repr(layer.weight.shape),
            repr(layer.attrs),
            ",".join(layer.epilogue) + (" fast" if self.fast_math and layer.epilogue else ""),
            ",".join(names),
        ):
            digest.update(part.encode())
            digest.update(b"\0")
        if not any(name.startswith("nm:") for name in names):
            digest.update(np.packbits(layer.weight != 0).tobytes())
        # else an N:M weight: every row keeps the same count in every group, so the kernels'
        # times depend on the shape alone, and the layers of a transformer's blocks (one shape,
        # each its own mask) share one measurement
        return digest.hexdigest()[:32]

    def _read(self, key: str, names: list[str], epilogue: tuple[str, ...]) -> LayerTiming | None:
        path = self.cache_dir / f"{key}.json"
        try:
            if not path.is_file():
                return None
            record = json.loads(path.read_text())
            ms = {name: float(record["ms"][name]) for name in names}
            if record.get("format_version") != FORMAT_VERSION or record["winner"] not in ms:
                raise ValueError("not a record of this version")
            if not all(np.isfinite(v) and v > 0 for v in ms.values()):
                raise ValueError("a time that is not a positive number")
            return LayerTiming(ms=ms, winner=record["winner"], rounds=int(record["rounds"]),
                               cached=True, device=self.runner.name, epilogue=epilogue)  # fmt: skip
        except Exception as err:  # noqa: BLE001 - a bad record is measured again
            warnings.warn(
                f"layer timing record {path.name} ignored ({type(err).__name__}: {err}); "
                "measuring the layer again",
                RuntimeWarning,
                stacklevel=3,
            )
            return None

    def _write(self, key: str, timing: LayerTiming) -> None:
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_dir / f".{key}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps({
                "format_version": FORMAT_VERSION, "ms": timing.ms, "winner": timing.winner,
                "rounds": timing.rounds,
            }))  # fmt: skip
            tmp.replace(self.cache_dir / f"{key}.json")  # atomic: a killed compile leaves no half
        except OSError as err:
            warnings.warn(f"layer timing not cached ({err})", RuntimeWarning, stacklevel=3)
