"""tvm_sparse: an Apache TVM plugin that turns pruned neural networks into real speed."""

from . import targets
from ._version import __version__
from .compile import compile  # noqa: A004
from .compiled_model import CompiledModel, load
from .frontend import ModelImportError, UnsupportedOperatorError
from .pipeline import pipeline
from .prune import SPARSITY_SCHEMES, Pruner, PruneResult, prune
from .remote import RemoteModel, to_remote
from .report import CompileReport, OpRecord
from .runtime import ThreadConfig
from .tune import autotune

__all__ = [
    "SPARSITY_SCHEMES",
    "CompileReport",
    "CompiledModel",
    "ModelImportError",
    "OpRecord",
    "PruneResult",
    "Pruner",
    "RemoteModel",
    "ThreadConfig",
    "UnsupportedOperatorError",
    "__version__",
    "autotune",
    "compile",
    "load",
    "pipeline",
    "prune",
    "targets",
    "to_remote",
]
