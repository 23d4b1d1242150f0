"""tvm_sparse: an Apache TVM plugin that turns pruned neural networks into real speed."""

__version__ = "0.1.0"

from . import targets  # noqa: E402
from .compile import compile  # noqa: E402,A004
from .compiled_model import CompiledModel, load  # noqa: E402
from .frontend import ModelImportError, UnsupportedOperatorError  # noqa: E402
from .pipeline import pipeline  # noqa: E402
from .prune import SPARSITY_SCHEMES, Pruner, PruneResult, prune  # noqa: E402
from .remote import RemoteModel, to_remote  # noqa: E402
from .report import CompileReport, OpRecord  # noqa: E402
from .runtime import ThreadConfig  # noqa: E402
from .tune import autotune  # noqa: E402

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
