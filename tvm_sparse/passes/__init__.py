"""Relax passes: detect pruned patterns in weights, then rewrite to shrunk or sparse ops.

Each pass works alone in any Relax pipeline; ``tvm_sparse.pipeline`` chains them.
"""

from .collect_report import (
    CollectComputeDtypes,
    CollectFusionGroups,
    CollectKernelReport,
    CollectOpReport,
)
from .convert_compute_dtype import ConvertComputeDtype
from .convert_to_nhwc import ConvertToNHWC
from .detect_sparsity import DetectSparsity, WeightSparsity, analyze_weight
from .fold_channel_scale import FoldChannelScale
from .fold_constants_on_host import FoldConstantsOnHost
from .inject_prefetch import InjectPrefetch
from .pack_weights import PackWeights
from .pad_attention_tokens import PadAttentionTokens
from .reorder_reshape_after_elementwise import ReorderReshapeAfterElementwise
from .rewrite_to_sparse import RewriteToSparse
from .rewrite_to_winograd import RewriteToWinograd
from .shrink_pruned_channels import ShrinkPrunedChannels
from .sparsity_config import SparsityConfig
from .uniquify_binding_names import UniquifyBindingNames
from .use_fast_math import UseFastMath

__all__ = [
    "CollectComputeDtypes",
    "CollectFusionGroups",
    "CollectKernelReport",
    "CollectOpReport",
    "ConvertComputeDtype",
    "ConvertToNHWC",
    "DetectSparsity",
    "FoldChannelScale",
    "FoldConstantsOnHost",
    "InjectPrefetch",
    "PackWeights",
    "PadAttentionTokens",
    "ReorderReshapeAfterElementwise",
    "RewriteToSparse",
    "RewriteToWinograd",
    "ShrinkPrunedChannels",
    "SparsityConfig",
    "UniquifyBindingNames",
    "UseFastMath",
    "WeightSparsity",
    "analyze_weight",
]
