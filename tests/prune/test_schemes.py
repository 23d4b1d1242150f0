import pytest
import torch

from tvm_sparse.prune.schemes import (
    SPARSITY_SCHEMES,
    BlockScheme,
    ChannelScheme,
    NMScheme,
    make_scheme,
)


def test_registry_keys_are_the_cli_choices():
    assert list(SPARSITY_SCHEMES) == ["unstructured", "n:m", "block", "channel", "head"]


@pytest.mark.parametrize(
    ("pattern", "options", "expected"),
    [
        ("2:4", {}, NMScheme(2, 4)),
        ("4:8", {}, NMScheme(4, 8)),
        ("n:m", {"n_m": (1, 4)}, NMScheme(1, 4)),
        ("block", {"block_shape": (4, 2)}, BlockScheme((4, 2))),
        ("channel", {"round_to": 8}, ChannelScheme(8)),
        ("Block", {}, BlockScheme()),
    ],
)
def test_make_scheme(pattern, options, expected):
    assert make_scheme(pattern, **options) == expected


def test_unknown_pattern_lists_choices():
    with pytest.raises(ValueError, match=r"unknown pattern 'diagonal'.*unstructured, n:m, block"):
        make_scheme("diagonal")


@pytest.mark.parametrize(("n", "m"), [(4, 4), (5, 4)])
def test_n_not_below_m(n, m):
    with pytest.raises(ValueError, match="n < m"):
        NMScheme(n, m)


@pytest.mark.parametrize("shape", [(0, 1), (16, -1), (4,), (2.0, 1), "16x1"])
def test_block_shape_must_be_positive(shape):
    with pytest.raises(ValueError, match="block_shape must be two positive integers"):
        BlockScheme(shape)


def test_option_of_another_scheme():
    with pytest.raises(ValueError, match=r"'round_to' does not apply to the 'n:m' pattern"):
        make_scheme("2:4", round_to=8)


def test_nm_mask_keeps_n_per_group():
    scores = torch.rand(8, 16)
    mask = NMScheme(2, 4).mask(scores)
    assert (mask.reshape(8, 4, 4).sum(-1) == 2).all()


def test_block_units_round_trip_partial_edges():
    scheme = BlockScheme((4, 3))
    units = scheme.unit_scores(torch.ones(10, 7))
    assert units.numel() == 3 * 3
    keep = torch.arange(units.numel()) % 2 == 0
    mask = scheme.expand(keep, torch.Size([10, 7]))
    assert mask.shape == (10, 7)
    assert mask[0, 0] and not mask[0, 3] and mask[0, 6] and not mask[4, 0]
