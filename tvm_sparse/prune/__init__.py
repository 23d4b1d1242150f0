"""The PyTorch pruning front end: masks in the patterns the compiler turns into speed.

``prune()`` prunes in one shot; :class:`Pruner` runs gradual schedules with fine-tuning between
steps. Channel pruning is dependency-aware (Torch-Pruning's DepGraph), so coupled layers are
pruned together and the compiler can remove the zeroed channels.
"""

from tvm_sparse.prune.api import prune
from tvm_sparse.prune.criteria import (
    CRITERIA,
    Criterion,
    MagnitudeCriterion,
    TaylorCriterion,
    make_criterion,
)
from tvm_sparse.prune.dependency import (
    AttentionSpec,
    ChannelGroup,
    build_channel_groups,
    find_attention_modules,
)
from tvm_sparse.prune.masks import apply_masks
from tvm_sparse.prune.physical import remove_pruned_channels
from tvm_sparse.prune.pruner import Pruner
from tvm_sparse.prune.result import LayerStats, ModelStats, PruneResult, measure
from tvm_sparse.prune.schedules import SCHEDULES, cubic_schedule
from tvm_sparse.prune.schemes import (
    SPARSITY_SCHEMES,
    BlockScheme,
    ChannelScheme,
    HeadScheme,
    NMScheme,
    SparsityScheme,
    UnstructuredScheme,
    make_scheme,
)

__all__ = [
    "CRITERIA",
    "SCHEDULES",
    "SPARSITY_SCHEMES",
    "AttentionSpec",
    "BlockScheme",
    "ChannelGroup",
    "ChannelScheme",
    "Criterion",
    "HeadScheme",
    "LayerStats",
    "MagnitudeCriterion",
    "ModelStats",
    "NMScheme",
    "PruneResult",
    "Pruner",
    "SparsityScheme",
    "TaylorCriterion",
    "UnstructuredScheme",
    "apply_masks",
    "build_channel_groups",
    "cubic_schedule",
    "find_attention_modules",
    "make_criterion",
    "make_scheme",
    "measure",
    "prune",
    "remove_pruned_channels",
]
