"""A DataModule's mixtures (the training mixture(s) and the validation grid, from its YAML keys) and Bradley–Terry
labelling at them: the source of *preference shift*. What a mixture is: :mod:`rdpo_lightning.mixtures`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# the mixtures' vocabulary moved to a leaf (the robust strategies read it too); importable from here as before
from rdpo_lightning.mixtures import (  # noqa: F401
    KINDS,
    Mixture,
    MixtureEntry,
    check_simplex,
    parse_mixture,
    two_attribute_mixture,
    vector_name,
)


@dataclass(frozen=True)
class MixtureGrid:
    """The training components (each a group id, with its share of the training pairs) and the validation mixtures.

    ``validation`` starts with the training components (in-distribution), then the α family (``val_alphas``), then
    the other ``val_mixtures``, without repeats.
    """

    train: tuple[Mixture, ...]
    shares: tuple[float, ...]
    validation: tuple[Mixture, ...]


@dataclass(frozen=True)
class MixtureArguments:
    """A DataModule's mixture arguments as the user gave them (YAML ``data.<field>``, ``kind`` being
    ``data.mixture_kind``), carried as one value to :func:`resolve_mixture_grid`."""

    attribute_a: str | None = None
    attribute_b: str | None = None
    train_alpha: float | None = None
    train_mixtures: Sequence[MixtureEntry] | None = None
    train_shares: Sequence[float] | None = None
    val_alphas: Sequence[float] | None = None
    val_mixtures: Sequence[MixtureEntry] | None = None
    kind: str = "convex"


def resolve_mixture_grid(
    attributes: Sequence[str],
    given: MixtureArguments,
    default_alpha: float = 0.1,
    default_val_alphas: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    prefix: str = "data.",
) -> MixtureGrid:
    """Turn a DataModule's mixture arguments into a :class:`MixtureGrid`, with errors naming the YAML key."""
    attribute_a, attribute_b, kind = given.attribute_a, given.attribute_b, given.kind
    train_alpha, train_mixtures, train_shares = given.train_alpha, given.train_mixtures, given.train_shares
    val_alphas, val_mixtures = given.val_alphas, given.val_mixtures
    attributes = list(attributes)
    if kind not in KINDS:
        raise ValueError(f"{prefix}mixture_kind must be one of {KINDS}, got {kind!r}")
    pair = None
    if attribute_a is not None or attribute_b is not None:
        if attribute_a is None or attribute_b is None:
            raise ValueError(
                f"{prefix}attribute_a and {prefix}attribute_b must be given together, got {attribute_a!r} and"
                f" {attribute_b!r}; {_clearing(prefix, 'attribute_a', 'attribute_b')} clears both"
            )
        for key, name in (("attribute_a", attribute_a), ("attribute_b", attribute_b)):
            if name not in attributes:
                raise ValueError(f"{prefix}{key}: unknown attribute {name!r}; the attributes are {attributes}")
        if attribute_a == attribute_b:
            raise ValueError(f"{prefix}attribute_a and {prefix}attribute_b must differ, both are {attribute_a!r}")
        pair = (attributes.index(attribute_a), attributes.index(attribute_b))

    if train_alpha is not None and train_mixtures is not None:
        raise ValueError(
            f"give one of {prefix}train_alpha ({train_alpha!r}) and {prefix}train_mixtures ({list(train_mixtures)!r}),"
            f" not both: a value an earlier -c file or flag set stays until null clears it:"
            f" {_clearing(prefix, 'train_alpha')} (or {_clearing(prefix, 'train_mixtures')})"
        )
    if train_mixtures is not None:
        if len(train_mixtures) == 0:
            raise ValueError(f"{prefix}train_mixtures is empty")
        train_keys = [f"{prefix}train_mixtures[{i}]" for i in range(len(train_mixtures))]
        train = [parse_mixture(e, attributes, pair, kind, k) for e, k in zip(train_mixtures, train_keys, strict=True)]
    else:
        if train_alpha is None and pair is None:
            raise ValueError(
                f"give {prefix}attribute_a and {prefix}attribute_b (the pair train_alpha mixes) "
                f"or {prefix}train_mixtures"
            )
        alpha = default_alpha if train_alpha is None else train_alpha
        train_keys = [f"{prefix}train_alpha"]
        train = [parse_mixture(alpha, attributes, pair, kind, train_keys[0])]
    if any(np.allclose(a.weights, b.weights) for i, a in enumerate(train) for b in train[:i]):
        raise ValueError(f"{prefix}train_mixtures repeats a mixture: {[m.name for m in train]}")
    named: dict[str, str] = {}
    for mixture, key in zip(train, train_keys, strict=True):
        _claim_name(named, mixture, key)
    if train_shares is None:
        shares = [1.0 / len(train)] * len(train)
    else:
        if len(train_shares) != len(train):
            raise ValueError(f"{prefix}train_shares has {len(train_shares)} entries for {len(train)} training mixtures")
        check_simplex(list(train_shares), what=f"{prefix}train_shares")
        shares = [float(s) for s in train_shares]

    alphas = default_val_alphas if val_alphas is None else val_alphas
    if pair is None and len(alphas) > 0:
        if val_alphas is not None:
            raise ValueError(
                f"{prefix}val_alphas ({list(val_alphas)!r}) needs {prefix}attribute_a and {prefix}attribute_b (the"
                f" pair each α mixes); without them, {_clearing(prefix, 'val_alphas')} clears it and"
                f" {prefix}val_mixtures lists the validation mixtures"
            )
        alphas = ()  # no pair to span: only the given val_mixtures
    keys = [f"{prefix}val_alphas[{i}]" for i in range(len(alphas))]
    keys += [f"{prefix}val_mixtures[{i}]" for i in range(len(val_mixtures or []))]
    entries = [*alphas, *(val_mixtures or [])]
    grid = [parse_mixture(entry, attributes, pair, kind, key) for entry, key in zip(entries, keys, strict=True)]
    validation = list(train)
    for mixture, key in zip(grid, keys, strict=True):  # the same α written twice (a number, a vector) is one set
        if not any(np.allclose(mixture.weights, m.weights) for m in validation):
            _claim_name(named, mixture, key)
            validation.append(mixture)
    return MixtureGrid(tuple(train), tuple(shares), tuple(validation))


def _clearing(prefix: str, *keys: str) -> str:
    """The flags that set ``keys`` to null (``--data.init_args.train_alpha=null``): how a stacked value is removed."""
    flag = f"--{prefix}init_args." if prefix == "data." else f"--{prefix}"
    return " ".join(f"{flag}{key}=null" for key in keys)


def _claim_name(named: dict[str, str], mixture: Mixture, key: str) -> None:
    """Validation sets and their metrics are keyed by name: two different mixtures with one name would lose one."""
    if mixture.name in named:
        raise ValueError(
            f"{named[mixture.name]} and {key} are different mixtures with the same name {mixture.name!r} "
            "(names show weights to 2 decimals); make them differ by at least 0.01 or drop one"
        )
    named[mixture.name] = key


def component_assignment(n: int, shares: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """(n,) component ids with counts as close to ``shares``·n as integers allow (largest remainder), shuffled."""
    exact = np.asarray(shares, dtype=np.float64) * n
    counts = np.floor(exact).astype(int)
    remainder = n - counts.sum()
    if remainder:
        counts[np.argsort(-(exact - counts), kind="stable")[:remainder]] += 1
    return rng.permutation(np.repeat(np.arange(len(shares)), counts))


def bradley_terry_labels(
    reward_a: np.ndarray, reward_b: np.ndarray, temperature: float | None, rng: np.random.Generator
) -> np.ndarray:
    """True where a is preferred: P(a ≻ b) = σ((r_a − r_b)/T); ``temperature=None`` picks the higher reward."""
    diff = np.asarray(reward_a, dtype=np.float64) - np.asarray(reward_b, dtype=np.float64)
    if temperature is None:
        return diff > 0
    if not temperature > 0:
        raise ValueError(f"label temperature must be > 0 (or null for deterministic labels), got {temperature}")
    prob_a = 0.5 * (1.0 + np.tanh(diff / (2.0 * temperature)))  # σ(x) without overflow
    return rng.random(diff.shape) < prob_a


def label_pairs(
    first_rewards: np.ndarray,
    second_rewards: np.ndarray,
    mixtures: Sequence[Mixture],
    assignment: np.ndarray,
    temperature: float | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """True where the first response wins: pair i is labelled by Bradley–Terry at ``mixtures[assignment[i]]``.

    ``*_rewards`` are (n, K) attribute rewards; one draw per pair from ``rng``, in order, so labels are reproducible.
    """
    n = len(assignment)
    mixed_first, mixed_second = np.empty(n), np.empty(n)
    for g, mixture in enumerate(mixtures):
        rows = np.flatnonzero(assignment == g)
        if len(rows):
            mixed_first[rows] = mixture.combine(first_rewards[rows])
            mixed_second[rows] = mixture.combine(second_rewards[rows])
    return bradley_terry_labels(mixed_first, mixed_second, temperature, rng)
