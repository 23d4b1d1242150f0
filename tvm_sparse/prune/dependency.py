"""Coupled channel groups, found once with Torch-Pruning's DepGraph and kept as plain data.

Each group Torch-Pruning returns becomes a :class:`ChannelGroup`: for every parameter it touches,
a *channel map* of the parameter's shape naming each element's group channel (or ``-1``), so a
mask is ``keep[channel_map]`` and a channel's score a ``scatter_add`` over it. Channel maps also
cover what zeroing needs and physical removal does not: a grouped convolution's input columns and
attention heads (:func:`find_attention_groups`; Torch-Pruning handles the heads of
``nn.MultiheadAttention`` only, and only when removing them).

Groups that zeroing cannot prune exactly are kept out, with the reason: channels that reach the
model's output or mix with a tensor the graph does not own (a model input added to a residual),
and channels normalised by LayerNorm or GroupNorm (zeroing them still changes the statistics).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = [
    "AttentionSpec",
    "ChannelGroup",
    "ParamSlice",
    "build_channel_groups",
    "find_attention_groups",
    "find_attention_modules",
]

logger = logging.getLogger("tvm_sparse.prune")

_HEAD_ATTRS = ("num_heads", "heads", "n_heads", "n_head", "nhead", "num_attention_heads")
_Q_NAMES = ("q", "q_proj", "query", "wq", "to_q")
_K_NAMES = ("k", "k_proj", "key", "wk", "to_k")
_V_NAMES = ("v", "v_proj", "value", "wv", "to_v")
_O_NAMES = ("o", "o_proj", "out_proj", "out", "attn_out", "wo", "proj", "to_out")


@dataclass
class ParamSlice:
    """The elements of one parameter that belong to a group's channels.

    Attributes
    ----------
    tensor_fqn : str
        Fully qualified parameter name, e.g. ``"layer1.conv1.weight"``.
    channel_map : torch.Tensor
        Same shape as the parameter; the group channel of each element, ``-1`` if none.
    role : str
        ``"out"`` (the channel's producer: conv or linear rows, bias, batch norm),
        ``"in"`` (a consumer's input columns).
    """

    tensor_fqn: str
    channel_map: torch.Tensor
    role: str


@dataclass
class ChannelGroup:
    """Channels (or attention heads) that must be pruned together.

    Attributes
    ----------
    kind : str
        ``"channel"`` or ``"head"``.
    root : str
        Name of the module whose output channels (or heads) index the group.
    num_channels : int
        Channels (or heads) in the group.
    modules : list[str]
        Modules whose output channels the group prunes (used for overrides and ignored layers).
    slices : list[ParamSlice]
        Every parameter element zeroed with a channel.
    """

    kind: str
    root: str
    num_channels: int
    modules: list[str]
    slices: list[ParamSlice] = field(default_factory=list)

    def channel_scores(
        self, param_scores: dict[str, torch.Tensor], *, roles: tuple[str, ...] = ("out", "in")
    ) -> torch.Tensor:
        """Sum per-element scores into one score per channel, over slices of the given roles."""
        total = torch.zeros(self.num_channels + 1, dtype=torch.float64)
        for s in self.slices:
            if s.role not in roles:
                continue
            score = param_scores.get(s.tensor_fqn)
            if score is None:
                continue
            index = s.channel_map.reshape(-1).clamp_min(-1) % (self.num_channels + 1)
            total.scatter_add_(0, index, score.reshape(-1).double())
        return total[: self.num_channels]

    def masks(self, keep: torch.Tensor) -> dict[str, torch.Tensor]:
        """Boolean masks per parameter that zero the channels where ``keep`` is false."""
        extended = torch.cat([keep.bool(), torch.ones(1, dtype=torch.bool)])
        out: dict[str, torch.Tensor] = {}
        for s in self.slices:
            mask = extended[s.channel_map]
            out[s.tensor_fqn] = out[s.tensor_fqn] & mask if s.tensor_fqn in out else mask
        return out


@dataclass(frozen=True)
class AttentionSpec:
    """Where the heads of one attention module live.

    ``q``, ``k``, ``v`` and ``o`` name linear layers (``o`` consumes the concatenated heads), or
    for ``nn.MultiheadAttention`` all four are empty and the packed parameters are used.
    """

    module: str
    num_heads: int
    q: str = ""
    k: str = ""
    v: str = ""
    o: str = ""


def _prefix(name: str, child: str) -> str:
    return f"{name}.{child}" if name else child


def find_attention_modules(model: nn.Module) -> list[AttentionSpec]:
    """Find attention modules: ``nn.MultiheadAttention`` and modules with a head count attribute
    (``num_heads``, ``heads``, ``n_heads``...) and query, key, value and output linear children
    with usual names (``q``/``q_proj``/``query``...)."""
    specs = []
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            specs.append(AttentionSpec(name, module.num_heads))
            continue
        heads = next(
            (getattr(module, a) for a in _HEAD_ATTRS if isinstance(getattr(module, a, None), int)),
            None,
        )
        if heads is None:
            continue
        children = {n: m for n, m in module.named_children() if isinstance(m, nn.Linear)}
        found = [next((n for n in names if n in children), None) for names in
                 (_Q_NAMES, _K_NAMES, _V_NAMES, _O_NAMES)]  # fmt: skip
        if all(found):
            q, k, v, o = (_prefix(name, n) for n in found)
            specs.append(AttentionSpec(name, heads, q, k, v, o))
    return specs


def _head_map(length: int, num_heads: int, *, packed: int = 1) -> torch.Tensor:
    per = length // packed // num_heads
    return (torch.arange(length) % (length // packed)) // per


def find_attention_groups(model: nn.Module, specs: list[AttentionSpec]) -> list[ChannelGroup]:
    """One head group per attention module: query, key and value rows and output columns."""
    params = dict(model.named_parameters())
    groups = []
    for spec in specs:
        slices = []
        module = model.get_submodule(spec.module)
        if isinstance(module, nn.MultiheadAttention):
            prefix = _prefix(spec.module, "")
            if module._qkv_same_embed_dim:
                rows = module.in_proj_weight.shape[0]
                hmap = _head_map(rows, spec.num_heads, packed=3)
                w = prefix + "in_proj_weight"
                slices.append(ParamSlice(w, hmap[:, None].expand_as(params[w]).clone(), "out"))
            else:
                for part in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                    w = prefix + part
                    hmap = _head_map(params[w].shape[0], spec.num_heads)
                    slices.append(ParamSlice(w, hmap[:, None].expand_as(params[w]).clone(), "out"))
            if module.in_proj_bias is not None:
                b = prefix + "in_proj_bias"
                slices.append(
                    ParamSlice(b, _head_map(params[b].shape[0], spec.num_heads, packed=3), "out")
                )
            ow = prefix + "out_proj.weight"
            omap = _head_map(params[ow].shape[1], spec.num_heads)
            slices.append(ParamSlice(ow, omap[None, :].expand_as(params[ow]).clone(), "in"))
            members = [spec.module]
        else:
            for lin in (spec.q, spec.k, spec.v):
                w = lin + ".weight"
                hmap = _head_map(params[w].shape[0], spec.num_heads)
                slices.append(ParamSlice(w, hmap[:, None].expand_as(params[w]).clone(), "out"))
                if lin + ".bias" in params:
                    slices.append(ParamSlice(lin + ".bias", hmap.clone(), "out"))
            ow = spec.o + ".weight"
            omap = _head_map(params[ow].shape[1], spec.num_heads)
            slices.append(ParamSlice(ow, omap[None, :].expand_as(params[ow]).clone(), "in"))
            members = [spec.module, spec.q, spec.k, spec.v]
        groups.append(ChannelGroup("head", spec.module, spec.num_heads, members, slices))
    return groups


def _inverse(index: list[int], size: int) -> torch.Tensor:
    inv = torch.full((size,), -1, dtype=torch.long)
    inv[torch.as_tensor([i for i, _ in index], dtype=torch.long)] = torch.as_tensor(
        [r for _, r in index], dtype=torch.long
    )
    return inv


def _rows(inv: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    view = inv.reshape(-1, *([1] * (len(shape) - 1)))
    return view.expand(shape).clone()


def _conv_in_columns(inv: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    # weight is (out, in/groups, *k): column j of a row in group g reads input g * in/g + j.
    shape = conv.weight.shape
    per_in = shape[1]
    per_out = shape[0] // conv.groups
    rows = torch.arange(shape[0]) // per_out
    index = rows[:, None] * per_in + torch.arange(per_in)[None, :]
    cmap = inv[index]
    return cmap.reshape(*cmap.shape, *([1] * (len(shape) - 2))).expand(shape).clone()


class _Unprunable(Exception):
    pass


def _operands_owned(node) -> bool:
    # An elementwise op whose operand has no grad_fn mixes in a tensor the graph does not see
    # (a model input or a buffer): the channel cannot be zeroed through it.
    grad_fn = getattr(node, "grad_fn", None)
    if grad_fn is None or not hasattr(grad_fn, "next_functions"):
        return True
    return all(fn is not None for fn, _ in grad_fn.next_functions)


def build_channel_groups(
    model: nn.Module,
    example_inputs: tuple,
    *,
    ignored: set[str] | None = None,
) -> tuple[list[ChannelGroup], dict[str, str]]:
    """Trace ``model`` with Torch-Pruning's DepGraph and return its prunable channel groups.

    Parameters
    ----------
    model : nn.Module
        The model, without parametrizations.
    example_inputs : tuple
        Positional inputs for one forward pass.
    ignored : set[str] | None
        Module names whose output channels must not be pruned; groups containing one are skipped.

    Returns
    -------
    groups : list[ChannelGroup]
        Prunable groups, rooted at conv and linear layers.
    skipped : dict[str, str]
        Root module name -> why its group cannot be pruned.
    """
    return _groups_of(trace(model, example_inputs), model, ignored or set())


def trace(model: nn.Module, example_inputs: tuple):
    """Build Torch-Pruning's dependency graph of ``model`` (in eval mode, restored after)."""
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    try:
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=list(example_inputs), verbose=False
        )
    finally:
        model.train(was_training)


def _groups_of(graph, model: nn.Module, ignored: set[str]):
    from torch_pruning import ops

    names = {m: n for n, m in model.named_modules()}
    param_names = {p: n for n, p in model.named_parameters()}
    unsupported = {
        ops.OPTYPE.LN: "LayerNorm normalises over the channels",
        ops.OPTYPE.GN: "GroupNorm normalises over the channels",
        ops.OPTYPE.IN: "InstanceNorm couples the channels",
        ops.OPTYPE.MHA: "attention embedding dimension (prune heads instead)",
        ops.OPTYPE.LSTM: "LSTM hidden size",
        ops.OPTYPE.EMBED: "embedding dimension",
        ops.OPTYPE.CUSTOMIZED: "custom layer",
    }
    groups: list[ChannelGroup] = []
    skipped: dict[str, str] = {}
    visited: set[nn.Module] = set()
    for module in list(graph.module2node):
        if not isinstance(module, (ops.TORCH_CONV, ops.TORCH_LINEAR)) or module in visited:
            continue
        pruner = graph.get_pruner_of_module(module)
        if pruner is None or pruner.get_out_channels(module) is None:
            continue
        root = names[module]
        n = pruner.get_out_channels(module)
        group = graph.get_pruning_group(module, pruner.prune_out_channels, list(range(n)))
        try:
            groups.append(_to_channel_group(group, graph, root, n, names, param_names, ignored,
                                            unsupported, visited))  # fmt: skip
        except _Unprunable as why:
            skipped[root] = str(why)
            logger.debug("channel group of %s is not prunable: %s", root, why)
    return groups, skipped


def _to_channel_group(group, graph, root, n, names, param_names, ignored, unsupported, visited):
    from torch_pruning import ops

    slices: dict[tuple[str, str], ParamSlice] = {}
    modules: list[str] = []
    reason = None
    for dep, idxs in group:
        node = dep.target
        module = node.module
        is_out = graph.is_out_channel_pruning_fn(dep.handler)
        if is_out and isinstance(module, nn.Module) and module in names:
            visited.add(module)
        if reason is not None:
            continue
        # Consumers (input-channel handlers) end the channel; only what carries it may not be
        # the last node.
        if is_out and not node.outputs and node.type != ops.OPTYPE.PARAMETER:
            reason = f"its channels reach the model output through {_node_name(node, names)}"
        elif node.type in unsupported:
            reason = f"{unsupported[node.type]} ({_node_name(node, names)})"
        elif node.type == ops.OPTYPE.ELEMENTWISE and not _operands_owned(node):
            reason = "its channels are added to a tensor outside the graph (a model input?)"
        if reason is not None:
            continue
        pairs = _pairs(idxs, n)
        if pairs is None:
            reason = f"cannot map its channels onto {_node_name(node, names)}"
            continue
        if node.type == ops.OPTYPE.PARAMETER:
            fqn = param_names[module]
            dim = node.pruning_dim % module.dim()
            inv = _inverse(pairs, module.shape[dim])
            shape = [1] * module.dim()
            shape[dim] = -1
            cmap = inv.reshape(shape).expand(module.shape).clone()
            slices[(fqn, "out")] = ParamSlice(fqn, cmap, "out")
            continue
        if not isinstance(module, nn.Module) or module not in names:
            continue  # a functional op (add, concat, reshape): nothing to zero
        name = names[module]
        if isinstance(module, (ops.TORCH_CONV, ops.TORCH_LINEAR)):
            weight = module.weight
            if is_out:
                if name in ignored:
                    reason = f"it contains the ignored layer {name!r}"
                    continue
                modules.append(name)
                inv = _inverse(pairs, weight.shape[0])
                slices[(name + ".weight", "out")] = ParamSlice(
                    name + ".weight", _rows(inv, weight.shape), "out"
                )
                if module.bias is not None:
                    slices[(name + ".bias", "out")] = ParamSlice(name + ".bias", inv.clone(), "out")
            else:
                in_size = weight.shape[1] * getattr(module, "groups", 1)
                inv = _inverse(pairs, in_size)
                if isinstance(module, ops.TORCH_CONV):
                    cmap = _conv_in_columns(inv, module)
                else:
                    cmap = inv[None, :].expand(weight.shape).clone()
                slices[(name + ".weight", "in")] = ParamSlice(name + ".weight", cmap, "in")
        elif isinstance(module, (ops.TORCH_BATCHNORM, nn.PReLU)):
            for pname, p in module.named_parameters(recurse=False):
                if p.dim() == 1 and p.shape[0] > 1:
                    inv = _inverse(pairs, p.shape[0])
                    fqn = f"{name}.{pname}"
                    slices[(fqn, "out")] = ParamSlice(fqn, inv, "out")
    if reason is not None:
        raise _Unprunable(reason)
    if not modules:
        raise _Unprunable("no conv or linear layer produces its channels")
    return ChannelGroup("channel", root, n, modules, list(slices.values()))


def _pairs(idxs, n: int) -> list[tuple[int, int]] | None:
    """(index in the member, group channel) pairs.

    Torch-Pruning lists a member's indices in the root's channel order, one per channel or, past
    a flatten, a run of ``k`` per channel; some mappings carry the root index explicitly.
    """
    if idxs and all(hasattr(i, "root_idx") for i in idxs):
        return [(int(i.idx), int(i.root_idx)) for i in idxs]
    if not idxs or len(idxs) % n:
        return None
    per = len(idxs) // n
    return [(int(getattr(i, "idx", i)), pos // per) for pos, i in enumerate(idxs)]


def _node_name(node, names) -> str:
    module = node.module
    if isinstance(module, nn.Module) and module in names:
        return repr(names[module])
    return type(module).__name__.lstrip("_")
