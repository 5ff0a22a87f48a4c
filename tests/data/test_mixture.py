"""Mixtures from YAML entries, their validation errors, and Bradley–Terry labels against σ(Δr/T)."""

from __future__ import annotations

import numpy as np
import pytest

from rdpo_lightning.data.mixture import (
    Mixture,
    MixtureArguments,
    bradley_terry_labels,
    component_assignment,
    label_pairs,
    parse_mixture,
    resolve_mixture_grid,
)

ATTRS = ["sadness", "joy", "love", "anger", "fear"]
PAIR = (3, 4)


def test_three_ways_to_write_one_mixture_agree():
    number = parse_mixture(0.1, ATTRS, PAIR)
    vector = parse_mixture([0, 0, 0, 0.1, 0.9], ATTRS, PAIR)
    mapping = parse_mixture({"anger": 0.1, "fear": 0.9}, ATTRS, PAIR)
    assert number.weights == vector.weights == mapping.weights == (0.0, 0.0, 0.0, 0.1, 0.9)
    assert number.name == "alpha=0.10"
    assert vector.name == mapping.name == "anger=0.10,fear=0.90"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ([0, 0, 0, -0.1, 1.1], r"val_mixtures\[1\]: weight of 'anger' is -0.1"),
        ([0, 0, 0, 0.5, 0.6], r"val_mixtures\[1\]: weights .* sum to 1.1, not 1"),
        ([0.5, 0.5], r"val_mixtures\[1\] has 2 weights but there are 5 attributes"),
        ({"anger": 0.5, "rage": 0.5}, r"val_mixtures\[1\]: unknown attribute\(s\) \['rage'\]"),
        ({"anger": float("nan"), "fear": 1.0}, r"weight of 'anger' is nan"),
        (1.5, r"val_mixtures\[1\]: alpha must lie in \[0, 1\]"),
        ("half", r"val_mixtures\[1\]: expected a number"),
        (0.504, r"val_alphas\[2\] and data.val_mixtures\[1\] are different mixtures with the same name 'alpha=0.50'"),
    ],
)
def test_bad_mixtures_name_the_offending_entry(entry, message):
    with pytest.raises(ValueError, match=message):
        resolve_mixture_grid(ATTRS, MixtureArguments("anger", "fear", val_mixtures=[0.5, entry]))


def test_training_mixtures_with_one_name_are_an_error():
    with pytest.raises(ValueError, match=r"train_mixtures\[0\] and data.train_mixtures\[1\] .* same name 'alpha=0.10'"):
        resolve_mixture_grid(ATTRS, MixtureArguments("anger", "fear", train_mixtures=[0.1, 0.104]))


def test_grid_starts_in_distribution_and_drops_repeats():
    given = MixtureArguments(
        "anger", "fear", 0.1, val_alphas=[0.0, 0.1, 1.0], val_mixtures=[[0, 0, 0, 0, 1.0], {"joy": 1}]
    )
    grid = resolve_mixture_grid(ATTRS, given)
    assert [m.name for m in grid.validation] == ["alpha=0.10", "alpha=0.00", "alpha=1.00", "joy=1.00"]
    assert grid.shares == (1.0,)


def test_training_components_and_shares():
    grid = resolve_mixture_grid(
        ATTRS, MixtureArguments("anger", "fear", train_mixtures=[0.1, {"joy": 1.0}], train_shares=[0.25, 0.75])
    )
    assert [m.name for m in grid.train] == ["alpha=0.10", "joy=1.00"]
    assert grid.shares == (0.25, 0.75)
    with pytest.raises(ValueError, match=r"give one of data.train_alpha \(0.1\) and data.train_mixtures \(\[0.2\]\)"):
        resolve_mixture_grid(ATTRS, MixtureArguments("anger", "fear", train_alpha=0.1, train_mixtures=[0.2]))
    with pytest.raises(ValueError, match="train_shares has 1 entries for 2"):
        resolve_mixture_grid(ATTRS, MixtureArguments("anger", "fear", train_mixtures=[0.1, 0.9], train_shares=[1.0]))
    with pytest.raises(ValueError, match="attribute_b: unknown attribute 'calm'"):
        resolve_mixture_grid(ATTRS, MixtureArguments("anger", "calm"))


def test_component_assignment_has_exact_counts():
    ids = component_assignment(10, [0.25, 0.75], np.random.default_rng(0))
    assert np.bincount(ids).tolist() == [3, 7]  # 2.5 and 7.5: largest remainder, ties to the first
    ids = component_assignment(9, [1 / 3] * 3, np.random.default_rng(0))
    assert np.bincount(ids).tolist() == [3, 3, 3]


def test_geometric_mixture_is_the_weighted_product():
    rewards = np.array([[0.2, 0.5], [0.9, 0.1]])
    mixture = Mixture((0.3, 0.7), "m", kind="geometric")
    np.testing.assert_allclose(mixture.combine(rewards), rewards[:, 0] ** 0.3 * rewards[:, 1] ** 0.7)


@pytest.mark.parametrize("temperature", [0.05, 0.2])
def test_bradley_terry_frequencies_match_sigmoid(temperature):
    """For each reward gap, the share of first-wins matches σ(Δr/T) within 4 standard errors."""
    gaps = np.array([-0.2, -0.05, 0.0, 0.03, 0.1, 0.3])
    n = 4000
    diff = np.repeat(gaps, n)
    wins = bradley_terry_labels(diff, np.zeros_like(diff), temperature, np.random.default_rng(1))
    observed = wins.reshape(len(gaps), n).mean(axis=1)
    expected = 1 / (1 + np.exp(-gaps / temperature))
    stderr = np.sqrt(expected * (1 - expected) / n) + 1e-9
    assert np.all(np.abs(observed - expected) < 4 * stderr + 1e-3), (observed, expected)


def test_deterministic_labels_pick_the_higher_reward_at_each_components_mixture():
    rng = np.random.default_rng(0)
    first, second = rng.random((50, 5)), rng.random((50, 5))
    mixtures = [parse_mixture(0.1, ATTRS, PAIR), parse_mixture({"joy": 0.5, "love": 0.5}, ATTRS, PAIR)]
    assignment = rng.integers(0, 2, 50)
    wins = label_pairs(first, second, mixtures, assignment, None, rng)
    for i in range(50):
        alpha = np.array(mixtures[assignment[i]].weights)
        assert wins[i] == (first[i] @ alpha > second[i] @ alpha)
