import copy

import pytest
import torch
import zoo
from helpers import assert_block_aligned, assert_n_m
from torch import nn

from tvm_sparse.prune import (
    Pruner,
    apply_masks,
    build_channel_groups,
    prune,
    remove_pruned_channels,
)
from tvm_sparse.prune.schedules import cubic_schedule

WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)


def _weights(model):
    return {n: m.weight for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)}


def _is_plain(model):
    return not any(hasattr(m, "parametrizations") for m in model.modules())


@pytest.mark.parametrize("name", list(zoo.ZOO))
@pytest.mark.parametrize(("pattern", "n", "m"), [("2:4", 2, 4), ("4:8", 4, 8)])
def test_n_m_every_group_conforms(name, pattern, n, m):
    model, x = zoo.make(name)
    result = prune(model, x, pattern=pattern)
    assert _is_plain(model)
    checked = 0
    for layer, weight in _weights(model).items():
        if weight.reshape(weight.shape[0], -1).shape[1] % m:
            assert f"{layer}.weight" in result.skipped
            continue
        assert_n_m(weight, n, m)
        assert result.after.layers[layer].sparsity == pytest.approx(1 - n / m)
        checked += 1
    assert checked


@pytest.mark.parametrize("name", list(zoo.ZOO))
@pytest.mark.parametrize("block", [(16, 1), (4, 4), (8, 1)])
def test_block_masks_aligned(name, block):
    model, x = zoo.make(name)
    prune(model, x, pattern="block", block_shape=block, sparsity=0.5)
    for weight in _weights(model).values():
        assert_block_aligned(weight, block)


@pytest.mark.parametrize("name", list(zoo.ZOO))
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_unstructured_reaches_sparsity(name, scope):
    model, x = zoo.make(name)
    result = prune(model, x, pattern="unstructured", sparsity=0.7, scope=scope)
    weights = _weights(model).values()
    zeros = sum(int(w.eq(0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    assert zeros / total == pytest.approx(0.7, abs=0.01)
    if scope == "layer":
        assert all(s == pytest.approx(0.7, abs=0.01) for s in result.sparsity.values())
    assert result.flops_after < result.flops_before
    assert result.params_after < result.params_before


def _channel_pruned(model, group):
    """Per slice, the set of group channels whose elements are all zero."""
    params = dict(model.named_parameters())
    sets = []
    for s in group.slices:
        value = params[s.tensor_fqn].detach()
        alive = torch.zeros(group.num_channels + 1, dtype=torch.bool)
        index = s.channel_map.reshape(-1) % (group.num_channels + 1)
        alive.scatter_reduce_(0, index, value.reshape(-1).ne(0), "amax")
        sets.append(
            (s.tensor_fqn, s.role, frozenset(torch.nonzero(~alive[:-1]).flatten().tolist()))
        )
    return sets


@pytest.mark.parametrize("name", ["mlp", "cnn", "depthwise", "transformer"])
def test_channel_masks_consistent_across_coupled_layers(name):
    model, x = zoo.make(name)
    groups, _ = build_channel_groups(model, x)
    assert groups
    result = prune(model, x, pattern="channel", sparsity=0.5)
    for group in groups:
        sets = _channel_pruned(model, group)
        pruned = set(result.pruned_channels[group.root])
        assert len(pruned) == group.num_channels // 2
        for fqn, role, zero in sets:
            assert pruned <= zero, (group.root, fqn, role)


def test_channel_residual_group_spans_blocks():
    model, x = zoo.make("cnn")
    groups, skipped = build_channel_groups(model, x)
    stem = next(g for g in groups if g.root == "stem.0")
    # The residual add ties the stem's channels to layer1's second conv and its batch norm.
    assert {"stem.0", "layer1.conv2"} <= set(stem.modules)
    fqns = {s.tensor_fqn for s in stem.slices}
    assert {"stem.1.bias", "layer1.bn2.weight", "layer1.bn2.bias", "layer2.conv1.weight"} <= fqns
    assert "fc" in skipped  # the classifier's outputs are the model's outputs


def test_channel_outputs_exactly_zero_through_batch_norm():
    model, x = zoo.make("cnn")
    result = prune(model, x, pattern="channel", sparsity=0.5)
    seen = {}
    model.layer1.bn1.register_forward_hook(lambda m, i, o: seen.setdefault("bn1", o))
    model(*x)
    dead = result.pruned_channels["layer1.conv1"]
    assert seen["bn1"][:, dead].abs().max() == 0
    assert seen["bn1"][:, [c for c in range(16) if c not in dead]].abs().max() > 0


def test_depthwise_and_expand_pruned_together():
    model, x = zoo.make("depthwise")
    result = prune(model, x, pattern="channel", sparsity=0.25)
    dead = result.pruned_channels["depthwise.0"]
    assert len(dead) == 16
    assert model.expand[0].weight[dead].abs().sum() == 0
    assert model.depthwise[0].weight[dead].abs().sum() == 0
    assert model.project[0].weight[:, dead].abs().sum() == 0
    # The projection adds to the model input: its channels cannot be zeroed.
    assert "project.0" in result.skipped


def test_concat_and_grouped_conv_coupling():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(3, 8, 3, padding=1)
            self.g = nn.Conv2d(16, 8, 3, padding=1, groups=4)
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            y = torch.relu(torch.cat([self.a(x), self.b(x)], 1))
            return self.fc(torch.relu(self.g(y)).mean((2, 3)))

    model, x = Net(), (torch.randn(2, 3, 8, 8),)
    reference = copy.deepcopy(model)
    result = prune(model, x, pattern="channel", sparsity=0.5)
    dead_b = result.pruned_channels["b"]
    # Channel c of b is input channel 8 + c of the 4-group conv: group (8 + c) // 4, column c % 4.
    for c in dead_b:
        rows = slice(((8 + c) // 4) * 2, ((8 + c) // 4 + 1) * 2)
        assert model.g.weight[rows, (8 + c) % 4].abs().sum() == 0
    # Physical removal leaves groups read by a grouped convolution to the compiler.
    physical = copy.deepcopy(model)
    assert remove_pruned_channels(physical, x) == {}
    assert physical.a.out_channels == 8
    assert not torch.equal(reference(*x), model(*x))


@pytest.mark.parametrize("name", ["mlp", "cnn", "depthwise", "transformer"])
def test_physical_removal_matches_zeroed_model(name):
    model, x = zoo.make(name)
    zeroed = copy.deepcopy(model)
    prune(zeroed, x, pattern="channel", sparsity=0.5)
    result = prune(model, x, pattern="channel", sparsity=0.5, physical=True)
    torch.testing.assert_close(model(*x), zeroed(*x), rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) < result.before.params
    assert result.masks == {}


def test_head_pruning_zeroes_whole_heads():
    model, x = zoo.make("transformer")
    result = prune(model, x, pattern="head", sparsity=0.5)
    dead = result.pruned_channels[""]
    assert len(dead) == 2
    head_dim = 16
    for h in dead:
        rows = slice(h * head_dim, (h + 1) * head_dim)
        for proj in (model.q, model.k, model.v):
            assert proj.weight[rows].abs().sum() == 0 and proj.bias[rows].abs().sum() == 0
        assert model.o.weight[:, rows].abs().sum() == 0
    assert result.flops_after < result.flops_before


def test_head_pruning_of_nn_multihead_attention():
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True).eval()
    x = (torch.randn(2, 5, 32),)
    result = prune(layer, x, pattern="head", sparsity=0.5)
    dead = result.pruned_channels["self_attn"]
    w = layer.self_attn.in_proj_weight.reshape(3, 4, 8, 32)
    assert w[:, dead].abs().sum() == 0 and w[:, [h for h in range(4) if h not in dead]].ne(0).all()
    # Channel pruning of a torch encoder layer prunes the feed-forward hidden units only.
    layer2 = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True).eval()
    r2 = prune(layer2, x, pattern="channel", sparsity=0.5)
    assert list(r2.pruned_channels) == ["linear1"]


def test_head_pattern_needs_attention():
    model, x = zoo.make("mlp")
    with pytest.raises(ValueError, match="found no attention module"):
        prune(model, x, pattern="head")


def test_round_to_and_target_preset():
    model, x = zoo.make("mlp")
    result = prune(model, x, pattern="channel", sparsity=0.3, round_to=16)
    for dead in result.pruned_channels.values():
        assert (128 - len(dead)) % 16 == 0
    model, x = zoo.make("mlp")
    # x86 preset: block (16, 1); the user's explicit choices win over it.
    result = prune(model, x, target="x86", sparsity=0.5)
    assert result.pattern == "block"
    assert_block_aligned(model.fc2.weight, (16, 1))
    model, x = zoo.make("mlp")
    prune(model, x, target="x86", block_shape=(4, 4), sparsity=0.5)
    assert_block_aligned(model.fc2.weight, (4, 4))
    model, x = zoo.make("mlp")
    assert prune(model, x, target="jetson-orin-nano").pattern == "n:m"
    assert_n_m(model.fc2.weight, 2, 4)
    model, x = zoo.make("mlp")
    assert prune(model, x, target="x86", pattern="channel").pattern == "channel"


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_an_override_rounds_its_group_by_its_own_multiple(scope):
    """An override that gives ``round_to`` and no sparsity keeps the run's sparsity and rounds
    its group by its own multiple, in either scope (layer scope used the run's multiple)."""
    model, x = zoo.make("mlp")
    result = prune(
        model, x, pattern="channel", sparsity=0.3, round_to=16, scope=scope,
        config=[{"module": "fc1", "round_to": 2}],
    )  # fmt: skip
    kept = {root: 128 - len(dead) for root, dead in result.pruned_channels.items()}
    assert kept["fc2"] % 16 == 0 and kept["fc1"] % 2 == 0
    if scope == "layer":  # 30% of 128 pruned: 90 kept, not rounded up to 96
        assert kept == {"fc1": 90, "fc2": 96}


def test_overrides_and_ignored_layers():
    model, x = zoo.make("mlp")
    result = prune(
        model,
        x,
        pattern="unstructured",
        sparsity=0.5,
        config=[{"module": "fc1", "sparsity": 0.9}, {"tensor_fqn": "fc2.weight", "sparsity": 0.0}],
        ignored_layers=["fc3"],
    )
    assert result.sparsity["fc1"] == pytest.approx(0.9, abs=0.01)
    assert result.sparsity["fc2"] == 0.0
    assert result.sparsity["fc3"] == 0.0
    model, x = zoo.make("cnn")
    result = prune(model, x, pattern="channel", sparsity=0.5, ignored_layers=[model.layer1.conv1])
    assert "layer1.conv1" not in result.pruned_channels
    model, x = zoo.make("mlp")
    result = prune(model, x, pattern="block", config=[{"module": "fc1", "block_shape": (1, 8)}])
    assert_block_aligned(model.fc1.weight, (1, 8))


def test_global_scope_channels():
    model, x = zoo.make("cnn")
    with torch.no_grad():
        model.layer2.conv1.weight.mul_(100)  # a layer that matters far more
    result = prune(model, x, pattern="channel", sparsity=0.5, scope="global")
    total = sum(len(v) for v in result.pruned_channels.values())
    assert total == pytest.approx((16 + 16 + 32 + 32) / 2, abs=2)
    # Scores are normalised per group, so no group is wiped out.
    assert all(len(v) < 32 for v in result.pruned_channels.values())


def _batches(model_name, n=3):
    model, x = zoo.make(model_name)
    generator = torch.Generator().manual_seed(1)
    return [
        (torch.randn(*x[0].shape, generator=generator), torch.randint(0, 10, (x[0].shape[0],)))
        for _ in range(n)
    ]


@pytest.mark.parametrize("pattern", ["unstructured", "channel"])
def test_taylor_criterion_uses_gradients(pattern):
    data = _batches("cnn")
    model, x = zoo.make("cnn")
    taylor = prune(model, x, pattern=pattern, criterion="taylor", data=data)
    model2, _ = zoo.make("cnn")
    l2 = prune(model2, x, pattern=pattern, criterion="l2")
    assert taylor.masks.keys() == l2.masks.keys()
    assert any(not torch.equal(taylor.masks[k], l2.masks[k]) for k in taylor.masks)
    assert all(p.grad is None for p in model.parameters())


def test_taylor_without_data_is_an_error():
    model, x = zoo.make("mlp")
    with pytest.raises(ValueError, match="pass data="):
        prune(model, x, pattern="unstructured", criterion="taylor")


def test_gradual_schedule_masks_in_force_and_resume(tmp_path):
    model, x = zoo.make("mlp")
    model.train()
    steps = []
    pruner = Pruner(
        model, x, pattern="channel", sparsity=0.75, schedule="cubic", total_steps=4,
        progress=lambda stage, done, total: steps.append(stage),
    )  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    target = torch.randint(0, 10, (4,))
    sparsities = []
    for step in range(4):
        for _ in range(2):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(*x), target).backward()
            optimizer.step()
            # Training never revives a pruned channel: the masks stay in force.
            if pruner.pruned_channels:
                dead = pruner.pruned_channels["fc1"]
                assert model.fc1.weight[dead].abs().sum() == 0
        sparsities.append(pruner.step())
        if step == 1:
            torch.save(pruner.state_dict(), tmp_path / "pruner.pt")
            saved = copy.deepcopy(model.state_dict())
    assert sparsities == pytest.approx([cubic_schedule(s, 4, 0.0, 0.75) for s in range(1, 5)])
    assert sparsities == sorted(sparsities)
    assert len(pruner.history) == 4
    result = pruner.finalize()
    assert _is_plain(model)
    assert len(result.pruned_channels["fc1"]) == 96

    # Resume from step 2 on a fresh model: same masks, same schedule position.
    fresh, _ = zoo.make("mlp")
    state = torch.load(tmp_path / "pruner.pt")
    resumed = Pruner.from_state_dict(fresh, x, state)
    assert resumed.step_count == 2 and len(resumed.history) == 2
    masks = resumed.result().masks
    assert masks.keys() == state["masks"].keys()
    assert all(torch.equal(masks[k], state["masks"][k]) for k in masks)
    assert resumed.step() == pytest.approx(cubic_schedule(3, 4, 0.0, 0.75))
    del saved

    # Saved masks reapply to a plain model too.
    plain, _ = zoo.make("mlp")
    apply_masks(plain, state["masks"])
    assert plain.fc1.weight[state["masks"]["fc1.weight"].logical_not()].abs().sum() == 0


def test_result_reports_counts():
    model, x = zoo.make("cnn")
    result = prune(model, x, pattern="channel", sparsity=0.5)
    assert result.flops_after < 0.6 * result.flops_before
    stats = result.after.layers["layer1.conv2"]
    assert stats.params == 8 * 8 * 9  # rows and the columns reading dead channels are removed
    text = result.summary()
    assert "layer1.conv2" in text and "total" in text
    assert result.to_dict()["pattern"] == "channel"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"pattern": "channel", "sparsity": 1.0}, ValueError, r"sparsity must be in \[0, 1\)"),
        ({"pattern": "channel", "sparsity": -0.1}, ValueError, r"sparsity must be in \[0, 1\)"),
        ({"pattern": "channel", "sparsity": "half"}, TypeError, "sparsity must be a number"),
        ({"pattern": "sparse"}, ValueError, "unknown pattern 'sparse'.*unstructured"),
        ({"pattern": "4:4"}, ValueError, "n < m"),
        ({"pattern": "n:m", "n_m": (3, 2)}, ValueError, "n < m"),
        ({"pattern": "2:4", "sparsity": 0.7}, ValueError, "contradicts the 2:4 pattern"),
        ({"pattern": "block", "block_shape": (0, 4)}, ValueError, "block_shape must be two"),
        ({"pattern": "block", "block_shape": (16, -1)}, ValueError, "block_shape must be two"),
        ({"pattern": "channel", "ignored_layers": ["fc9"]}, ValueError, "'fc9' does not exist"),
        ({"pattern": "channel", "config": [{"module": "fc4"}]}, ValueError, "'fc4' does not"),
        (
            {"pattern": "unstructured", "config": [{"tensor_fqn": "fc1.weigth"}]},
            ValueError,
            "did you mean 'fc1.weight'",
        ),
        (
            {"pattern": "channel", "config": [{"module": "fc1", "spars": 0.1}]},
            ValueError,
            "unknown key 'spars'",
        ),
        ({"pattern": "channel", "block_shape": (4, 4)}, ValueError, "does not apply"),
        ({"pattern": "channel", "criterion": "l3"}, ValueError, "unknown criterion 'l3'.*l1"),
        ({"pattern": "channel", "scope": "model"}, ValueError, "unknown scope 'model'"),
        ({"pattern": "channel", "target": "tpu"}, ValueError, "unknown target 'tpu'"),
        ({}, ValueError, "pass pattern="),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, error, match):
    model, x = zoo.make("mlp")
    with pytest.raises(error, match=match):
        prune(model, x, **kwargs)


def test_physical_needs_channel_pattern():
    model, x = zoo.make("mlp")
    with pytest.raises(ValueError, match="physical=True"):
        prune(model, x, pattern="unstructured", physical=True)


def test_prune_names_an_unknown_option():
    model, x = zoo.make("mlp")
    with pytest.raises(TypeError, match="'spasity'.*valid options are.*physical.*sparsity"):
        prune(model, x, pattern="channel", spasity=0.5)
    with pytest.raises(TypeError, match="takes no 'schedule': use a Pruner"):
        prune(model, x, pattern="channel", schedule="cubic")
    with pytest.raises(TypeError, match="'spasity'"):
        Pruner(model, x, pattern="channel", spasity=0.5)
