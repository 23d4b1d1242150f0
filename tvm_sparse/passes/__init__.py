"""Relax passes: detect pruned patterns in weights, then rewrite to shrunk or sparse ops.

Each pass works alone in any Relax pipeline; ``tvm_sparse.pipeline`` chains them.
"""

from .collect_report import CollectFusionGroups, CollectKernelReport, CollectOpReport
from .detect_sparsity import DetectSparsity, WeightSparsity, analyze_weight
from .pack_weights import PackWeights
from .rewrite_to_sparse import RewriteToSparse
from .shrink_pruned_channels import ShrinkPrunedChannels
from .uniquify_binding_names import UniquifyBindingNames

__all__ = [
    "CollectFusionGroups",
    "CollectKernelReport",
    "CollectOpReport",
    "DetectSparsity",
    "PackWeights",
    "RewriteToSparse",
    "ShrinkPrunedChannels",
    "UniquifyBindingNames",
    "WeightSparsity",
    "analyze_weight",
]
