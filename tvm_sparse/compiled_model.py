"""CompiledModel: a compiled Relax VM program called like the model it came from."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any

import tvm
from tvm import relax

from ._version import __version__
from .frontend import InputSpec
from .report import CompileReport
from .runtime import threading as runtime_threads
from .runtime.model_io import check_inputs, convert_outputs, time_vm_main, to_tvm_tensors
from .runtime.threading import ThreadConfig
from .targets import TargetPreset, is_host_target, missing_host_features, resolve_target
from .targets.backend import CPU, CUDA, backend_of

__all__ = ["CompiledModel", "load", "use_all_cores"]

_META_SUFFIX = ".meta.json"


class CompiledModel:
    """A compiled model: call it with NumPy arrays or torch tensors.

    Outputs come back as the same kind as the inputs (torch in, torch out), in the structure
    the source model returns (a PyTorch model's tuple or dict; ONNX outputs as a tuple, or a
    single array when there is one).

    Attributes
    ----------
    report : CompileReport
        One row per operator: kernel, pattern and reason.
    inputs : list[InputSpec]
        Expected inputs; dynamic dimensions are named strings.
    threads : ThreadConfig
        How CPU kernels run their parallel loops (threads, pinning); assign a new
        :class:`~tvm_sparse.runtime.ThreadConfig` to change it between calls.
    launcher : str | None
        Which parallel launcher the loaded CPU code uses, once the model has run.
    """

    def __init__(
        self,
        executable: Any,
        *,
        preset: TargetPreset,
        inputs: list[InputSpec],
        output_spec: str | None,
        report: CompileReport,
        device: tvm.runtime.Device | None = None,
        threads: ThreadConfig | None = None,
        library_path: str | None = None,
    ):
        if threads is not None and not isinstance(threads, ThreadConfig):
            raise TypeError(
                f"threads must be a tvm_sparse.runtime.ThreadConfig, not {type(threads).__name__}"
            )
        self.executable = executable
        self.threads = threads or ThreadConfig()
        self.launcher: str | None = None
        self._library_path = library_path
        self.preset = preset
        self.inputs = inputs
        self.output_spec = output_spec
        self.report = report
        self._device = device
        self._vm: relax.VirtualMachine | None = None
        self._main: Any = None

    @property
    def target(self) -> tvm.target.Target:
        return self.preset.tvm_target()

    @property
    def vm(self) -> relax.VirtualMachine:
        if self._vm is None:
            device = self._device
            backend = backend_of(self.target)
            if device is None and backend is CUDA:
                device = tvm.cuda(0)
                if not device.exist:
                    raise RuntimeError(
                        f"this model is compiled for {self.preset.name} (CUDA "
                        f"{self.target.attrs.get('arch', '')}) and this machine has no CUDA GPU: "
                        "export_library() it and run it on the device, or run it over TVM RPC"
                    )
            elif device is None and not is_host_target(self.target):
                raise RuntimeError(
                    f"this model is compiled for {self.preset.name} ({self.target.kind.name}), "
                    "which is not this machine: export_library() it and run it on the device, "
                    "or run it over TVM RPC"
                )
            if device is None:
                device = tvm.device(backend.device, 0)
            use_all_cores(self.target)
            module = self.executable
            if device.dlpack_device_type() == tvm.cpu().dlpack_device_type():
                module = self._load_with_launcher()
            self._vm = relax.VirtualMachine(module, device)
            self._device = device
        return self._vm

    def _load_with_launcher(self) -> Any:
        """The CPU code loaded from a shared library, its parallel loops on tvm_sparse's
        launcher (:mod:`tvm_sparse.runtime.threading`); TVM's pool where that cannot be."""
        module, problem = runtime_threads.load_module(
            self.executable, self.threads, path=self._library_path
        )
        if problem is None:
            self.launcher = f"tvm_sparse launcher ({self.threads.describe()})"
        else:
            self.launcher = f"TVM's thread pool ({problem})"
            self.report.notes.append(f"parallel loops run on {self.launcher}")
            warnings.warn(
                f"compiled model runs on TVM's thread pool: {problem}; latency may stall "
                "while another process shares a core",
                RuntimeWarning,
                stacklevel=3,
            )
        return module

    def _convert_inputs(self, args: tuple) -> tuple[list[tvm.runtime.Tensor], bool]:
        arrays, as_torch = check_inputs(args, self.inputs)
        return to_tvm_tensors(arrays, self.vm_device), as_torch

    @property
    def vm_device(self) -> tvm.runtime.Device:
        self.vm  # noqa: B018  (creates the VM and picks its device)
        return self._device

    def __call__(self, *args: Any) -> Any:
        tensors, as_torch = self._convert_inputs(args)
        runtime_threads.configure(self.threads)
        if self._main is None:  # looked up once: a lookup per call costs a small model's time
            self._main = self.vm["main"]
        return convert_outputs(self._main(*tensors), self.output_spec, as_torch=as_torch)

    def benchmark(
        self, *args: Any, warmup: int = 3, repeat: int = 30, min_repeat_ms: float = 0
    ) -> dict[str, float]:
        """Latency of one call, without Python conversion: median, min, p90 and mean in ms."""
        tensors, _ = self._convert_inputs(args)
        runtime_threads.configure(self.threads)
        return time_vm_main(
            self.vm, self.vm_device, tensors, warmup=warmup, repeat=repeat, min_ms=min_repeat_ms
        )

    def profile(self, *args: Any, calls: int = 20) -> list[Any]:
        """Milliseconds per call of each kernel, slowest first
        (:func:`tvm_sparse.profiling.profile`: relative figures, each kernel timed from
        Python)."""
        from .profiling import profile

        return profile(self, *args, calls=calls)

    def gpu_resources(self) -> list[Any]:
        """For a CUDA build: each kernel's registers, spills, shared memory and estimated
        occupancy, from ``nvcc`` here (:func:`tvm_sparse.gpu_resources.add_gpu_resources`);
        also in ``report.gpu_kernels``. Empty, with a note in the report, where this machine
        has no compiler for the architecture."""
        from .gpu_resources import add_gpu_resources

        return add_gpu_resources(self)

    def export_library(self, path: str | os.PathLike) -> str:
        """Write a shared library for the target (cross-compiled if needed) and its metadata.

        ``tvm_sparse.load(path)`` reads both back. The metadata (inputs, output structure,
        report, target) goes to ``<path>.meta.json`` beside the library.
        """
        path = os.fspath(path)
        kwargs = {}
        if self.preset.cross_compiler and not is_host_target(self.target.host or self.target):
            from tvm.support import cc

            kwargs["fcompile"] = cc.cross_compiler(self.preset.cross_compiler)
        self.executable.export_library(path, **kwargs)
        meta = {
            "tvm_sparse_version": __version__,
            "preset": self.preset.name,
            "target": str(self.target),
            "inputs": [[s.name, list(s.shape), s.dtype] for s in self.inputs],
            "output_spec": self.output_spec,
            "report": self.report.to_dict(),
        }
        with open(path + _META_SUFFIX, "w") as f:
            json.dump(meta, f, indent=1)
        return path

    def to_remote(self, session: Any, *, device: tvm.runtime.Device | None = None) -> Any:
        """Upload to a TVM RPC device and return a model that runs there.

        ``session`` comes from ``tvm.rpc.connect`` or ``tvm.rpc.connect_tracker(...).request``;
        ``device`` defaults to the session's CPU (its GPU for CUDA targets). See
        :class:`tvm_sparse.remote.RemoteModel`.
        """
        from .remote import RemoteModel

        return RemoteModel(self, session, device=device)

    def __repr__(self) -> str:
        ins = ", ".join(s.describe() for s in self.inputs)
        return f"CompiledModel(target={self.preset.name!r}, inputs=[{ins}])"


def use_all_cores(target: tvm.target.Target) -> None:
    """Give TVM's thread pool one worker per core of the target, unless the user chose.

    Unset, TVM starts half as many workers as logical CPUs on x86 (it assumes two hardware
    threads per core), so a 2-core machine computes on one. The pool reads the variable when
    its first parallel kernel runs.
    """
    if "TVM_NUM_THREADS" in os.environ:
        return
    host = target.host or target
    cores = host.attrs.get("num-cores") if backend_of(host, allow_none=True) is CPU else None
    os.environ["TVM_NUM_THREADS"] = str(int(cores) if cores else runtime_threads.available_cores())


def load(
    path: str | os.PathLike,
    device: tvm.runtime.Device | None = None,
    *,
    threads: ThreadConfig | None = None,
) -> CompiledModel:
    """Load a library written by :meth:`CompiledModel.export_library`.

    ``threads`` sets how CPU kernels use threads (see :class:`CompiledModel`).
    """
    path = os.fspath(path)
    meta_path = path + _META_SUFFIX
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no compiled library at {path!r}")
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(
            f"{meta_path!r} is missing: tvm_sparse.load needs the metadata that export_library "
            "writes beside the library"
        )
    with open(meta_path) as f:
        meta = json.load(f)
    # The target the library was built for, as stored: a preset such as "x86" resolves to
    # this machine's CPU, which need not be the one the code was generated for.
    text = meta["target"]
    built_for = json.loads(text) if text.startswith("{") else text
    if meta["preset"] != "custom":
        preset = dataclasses.replace(resolve_target(meta["preset"]), target=built_for)
    else:
        preset = resolve_target(built_for)
    target = preset.tvm_target()
    missing = missing_host_features(target.host or target)
    if missing and device is None:
        raise RuntimeError(
            f"{path!r} is built for {meta['preset']} ({target.host or target}), which this "
            f"machine cannot run: it lacks {', '.join(missing)}. Load it on a machine that has "
            "them, compile the model again here (tvm_sparse.compile(model, 'x86')), or run it "
            "there with CompiledModel.to_remote(session)"
        )
    executable = tvm.runtime.load_module(path)
    inputs = [
        InputSpec(name, tuple(d if isinstance(d, int) else str(d) for d in shape), dtype)
        for name, shape, dtype in meta["inputs"]
    ]
    return CompiledModel(
        executable,
        preset=preset,
        inputs=inputs,
        output_spec=meta["output_spec"],
        report=CompileReport.from_dict(meta["report"]),
        device=device,
        threads=threads,
        library_path=os.path.abspath(path),
    )
