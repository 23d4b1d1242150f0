"""Autotuning: MetaSchedule over dense ops, knob search over sparse kernels, a tuning cache.

``autotune(model, target, trials=...)`` measures candidates and appends them to a per-target
cache; ``tvm_sparse.compile`` applies the winners (``ApplyTuningRecords``) and the compile
report marks those ops ``(tuned)``.
"""

from .apply_tuning_records import ApplyTuningRecords
from .autotune import autotune
from .cache import TuningCache, TuningCacheError, TuningCacheWarning, default_cache_dir
from .rpc_tracker import RPCTracker
from .tune_result import TuneResult, WorkloadResult

__all__ = [
    "ApplyTuningRecords",
    "RPCTracker",
    "TuneResult",
    "TuningCache",
    "TuningCacheError",
    "TuningCacheWarning",
    "WorkloadResult",
    "autotune",
    "default_cache_dir",
]
