"""What pruning did: per-layer sparsity, parameters and FLOPs before and after."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["LayerStats", "ModelStats", "PruneResult", "measure"]


@dataclass
class LayerStats:
    """One layer's counts.

    Attributes
    ----------
    name : str
        Module name.
    type : str
        Module class name.
    weight_shape : tuple[int, ...]
        Shape of the weight.
    sparsity : float
        Fraction of the weight that is zero.
    params : int
        Nonzero weights and biases. Channel pruning zeroes the consumers' columns that read a
        pruned channel too, so these count as removed.
    flops : int
        Floating-point operations (2 per multiply-accumulate with a nonzero weight) for the
        example inputs.
    """

    name: str
    type: str
    weight_shape: tuple[int, ...]
    sparsity: float
    params: int
    flops: int


@dataclass
class ModelStats:
    """Whole-model counts: ``params`` counts every nonzero parameter, ``layers`` the conv,
    linear and attention layers."""

    params: int
    flops: int
    layers: dict[str, LayerStats] = field(default_factory=dict)


def measure(model: nn.Module, example_inputs: tuple) -> ModelStats:
    """Count nonzero parameters and the FLOPs of conv, linear and attention layers with one
    forward pass over ``example_inputs``."""
    layers: dict[str, LayerStats] = {}
    live_weights: dict[str, int] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple, output: Any) -> None:
            x = args[0] if args else None
            if isinstance(module, nn.MultiheadAttention):
                layers[name] = _attention_stats(name, module, args)
                return
            weight = module.weight.detach()
            if isinstance(module, nn.Linear):
                positions = x.numel() // x.shape[-1]
            else:
                positions = output.numel() // output.shape[1]
            effective = weight.ne(0)
            nnz = int(effective.sum())
            bias = 0 if module.bias is None else int(module.bias.detach().ne(0).sum())
            live_weights[name] = nnz
            layers[name] = LayerStats(
                name,
                type(module).__name__,
                tuple(weight.shape),
                float(weight.eq(0).float().mean()),
                nnz + bias,
                2 * positions * nnz,
            )

        return record

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention) or (
            isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
            and not _inside_mha(model, name)
        ):
            handles.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for h in handles:
            h.remove()
    params = 0
    seen: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, parametrize.ParametrizationList):
            continue  # its 'original' is counted through the parametrized module
        tensors = {k: v for k, v in module._parameters.items() if v is not None}
        if parametrize.is_parametrized(module):
            tensors.update({k: getattr(module, k) for k in module.parametrizations.keys()})
        for pname, tensor in tensors.items():
            if pname == "weight" and name in live_weights:
                params += live_weights[name]
            elif id(tensor) not in seen:
                params += int(tensor.detach().ne(0).sum())
            seen.add(id(tensor))
    flops = sum(s.flops for s in layers.values())
    return ModelStats(params, flops, layers)


def _inside_mha(model: nn.Module, name: str) -> bool:
    parent, _, _ = name.rpartition(".")
    if not name:
        return False
    try:
        return isinstance(model.get_submodule(parent), nn.MultiheadAttention)
    except AttributeError:
        return False


def _attention_stats(name: str, mha: nn.MultiheadAttention, args: tuple) -> LayerStats:
    query, key = args[0], args[1]
    lq = query.numel() // query.shape[-1]
    lk = key.numel() // key.shape[-1]
    e = mha.embed_dim
    if mha._qkv_same_embed_dim:
        w = mha.in_proj_weight.detach()
        q_rows, k_rows, v_rows = w[:e], w[e : 2 * e], w[2 * e :]
    else:
        q_rows = mha.q_proj_weight.detach()
        k_rows = mha.k_proj_weight.detach()
        v_rows = mha.v_proj_weight.detach()
    o = mha.out_proj.weight.detach()
    nnz = sum(int(t.ne(0).sum()) for t in (q_rows, k_rows, v_rows, o))
    total = sum(t.numel() for t in (q_rows, k_rows, v_rows, o))
    head_dim = e // mha.num_heads
    live_heads = int(q_rows.reshape(mha.num_heads, -1).ne(0).any(1).sum())
    batch = query.shape[1] if query.dim() == 3 and not mha.batch_first else query.shape[0]
    seq_q, seq_k = lq // max(batch, 1), lk // max(batch, 1)
    proj = 2 * (lq * int(q_rows.ne(0).sum()) + lk * int(k_rows.ne(0).sum()))
    proj += 2 * (lk * int(v_rows.ne(0).sum()) + lq * int(o.ne(0).sum()))
    attention = 2 * 2 * batch * live_heads * seq_q * seq_k * head_dim
    return LayerStats(
        name, "MultiheadAttention", (3 * e, e), 1.0 - nnz / total, nnz, proj + attention
    )


@dataclass
class PruneResult:
    """The outcome of :func:`tvm_sparse.prune` or :meth:`Pruner.finalize`.

    Attributes
    ----------
    model : nn.Module
        The pruned model (the same object that was passed in, changed in place).
    pattern : str
        The pattern that was applied.
    before, after : ModelStats
        Counts of the dense model and of the pruned one.
    masks : dict[str, torch.Tensor]
        The boolean masks applied, by parameter name.
    pruned_channels : dict[str, list[int]]
        For ``channel`` and ``head``: group root -> pruned channel (head) indices.
    skipped : dict[str, str]
        Layers or groups left dense, with the reason.
    """

    model: nn.Module
    pattern: str
    before: ModelStats
    after: ModelStats
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    pruned_channels: dict[str, list[int]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def sparsity(self) -> dict[str, float]:
        """Per-layer weight sparsity."""
        return {name: s.sparsity for name, s in self.after.layers.items()}

    @property
    def params_before(self) -> int:
        return self.before.params

    @property
    def params_after(self) -> int:
        return self.after.params

    @property
    def flops_before(self) -> int:
        return self.before.flops

    @property
    def flops_after(self) -> int:
        return self.after.flops

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: everything but the model and the masks."""
        return {
            "pattern": self.pattern,
            "before": asdict(self.before),
            "after": asdict(self.after),
            "pruned_channels": self.pruned_channels,
            "skipped": self.skipped,
        }

    def summary(self) -> str:
        """A table of per-layer sparsity, parameters and FLOPs."""
        rows = [f"{'layer':<28} {'sparsity':>8} {'params':>17} {'MFLOPs':>17}"]
        for name, after in self.after.layers.items():
            before = self.before.layers.get(name, after)
            rows.append(
                f"{name or '<model>':<28} {after.sparsity:>8.1%} "
                f"{before.params:>8} -> {after.params:<6} "
                f"{before.flops / 1e6:>7.3f} -> {after.flops / 1e6:<7.3f}"
            )
        rows.append(
            f"{'total':<28} {'':>8} {self.before.params:>8} -> {self.after.params:<6} "
            f"{self.before.flops / 1e6:>7.3f} -> {self.after.flops / 1e6:<7.3f}"
        )
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.summary()
