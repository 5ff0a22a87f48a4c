"""Mixtures of reward attributes and Bradley–Terry labelling: the source of *preference shift*.

A mixture is a weight vector α on the simplex over K attributes. Training labels are drawn at one α₀; users who weigh
the attributes differently are other points α. Convex: r(α) = Σ_k α_k r_k. Geometric: r(α) = Π_k r_k^α_k (the
paper's r1^α·r2^(1−α)), computed in log space.

In YAML a mixture is written one of three ways (:func:`parse_mixture`): a number α (the paper's one-parameter family
α·r_a + (1−α)·r_b between ``attribute_a`` and ``attribute_b``), a list of K weights, or a mapping
``{attribute: weight}`` (unnamed attributes weigh 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

KINDS = ("convex", "geometric")

#: what a YAML entry for one mixture may be
MixtureEntry = float | list[float] | dict[str, float]


@dataclass(frozen=True)
class Mixture:
    """A named point α of the simplex and how it combines attribute rewards."""

    weights: tuple[float, ...]
    name: str
    kind: str = "convex"

    def __post_init__(self) -> None:
        check_simplex(self.weights, what=f"mixture {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"mixture kind must be one of {KINDS}, got {self.kind!r}")

    def combine(self, attribute_rewards: np.ndarray) -> np.ndarray:
        """(n, K) attribute rewards → (n,) mixed reward."""
        rewards = np.asarray(attribute_rewards, dtype=np.float64)
        if rewards.ndim != 2 or rewards.shape[1] != len(self.weights):
            raise ValueError(
                f"mixture {self.name!r} has {len(self.weights)} weights but rewards have shape {rewards.shape}"
            )
        alpha = np.asarray(self.weights)
        if self.kind == "convex":
            return rewards @ alpha
        if (rewards[:, alpha > 0] <= 0).any():
            raise ValueError(f"geometric mixture {self.name!r} needs positive rewards for its non-zero weights")
        with np.errstate(divide="ignore"):
            logs = np.where(alpha > 0, np.log(np.where(rewards > 0, rewards, 1.0)), 0.0)
        return np.exp(logs @ alpha)


def check_simplex(
    weights: Sequence[float],
    what: str = "mixture",
    length: int | None = None,
    names: Sequence[str] | None = None,
) -> None:
    """α must be finite, non-negative, sum to 1 (within 1e-6) and, when given, have ``length`` entries.

    The error names ``what`` (the YAML key) and the offending entry (by attribute name when ``names`` is given).
    """
    if length is not None and len(weights) != length:
        listed = f" ({', '.join(names)})" if names is not None else ""
        raise ValueError(f"{what} has {len(weights)} weights but there are {length} attributes{listed}")
    if len(weights) == 0:
        raise ValueError(f"{what} has no weights")
    for k, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            entry = f"weight of {names[k]!r}" if names is not None and k < len(names) else f"weight {k}"
            raise ValueError(f"{what}: {entry} is {w!r}; weights must be finite and >= 0")
    total = float(sum(weights))
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"{what}: weights {list(weights)} sum to {total:g}, not 1")


def two_attribute_mixture(alpha: float, index_a: int, index_b: int, num_attributes: int, kind: str = "convex"):
    """The paper's one-parameter family α·r_a + (1−α)·r_b, named ``alpha=0.10``."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    weights = [0.0] * num_attributes
    weights[index_a] += alpha
    weights[index_b] += 1.0 - alpha
    return Mixture(tuple(weights), name=f"alpha={alpha:.2f}", kind=kind)


def vector_name(weights: Sequence[float], attributes: Sequence[str]) -> str:
    """A readable name for a general α: its non-zero weights, e.g. ``anger=0.20,fear=0.80``."""
    return ",".join(f"{a}={w:.2f}" for a, w in zip(attributes, weights, strict=True) if w > 0)


def parse_mixture(
    entry: MixtureEntry,
    attributes: Sequence[str],
    pair: tuple[int, int] | None,
    kind: str = "convex",
    where: str = "mixture",
) -> Mixture:
    """One YAML entry → :class:`Mixture`; errors name ``where`` (e.g. ``data.val_mixtures[2]``).

    A number is α on the two-attribute family (needs ``pair``); a list gives all K weights; a mapping gives weights by
    attribute name.
    """
    k = len(attributes)
    if isinstance(entry, Mapping):
        unknown = [name for name in entry if name not in attributes]
        if unknown:
            raise ValueError(f"{where}: unknown attribute(s) {unknown}; the attributes are {list(attributes)}")
        weights = [entry.get(name, 0.0) for name in attributes]
        check_simplex(weights, what=where, length=k, names=attributes)
        weights = [float(w) for w in weights]
        return Mixture(tuple(weights), name=vector_name(weights, attributes), kind=kind)
    if isinstance(entry, (list, tuple)):
        check_simplex(list(entry), what=where, length=k, names=attributes)
        weights = [float(w) for w in entry]
        return Mixture(tuple(weights), name=vector_name(weights, attributes), kind=kind)
    if isinstance(entry, (int, float)) and not isinstance(entry, bool):
        if pair is None:
            raise ValueError(f"{where}: a single number α needs attribute_a and attribute_b to say which two it mixes")
        if not 0.0 <= entry <= 1.0:
            raise ValueError(f"{where}: alpha must lie in [0, 1], got {entry!r}")
        return two_attribute_mixture(float(entry), pair[0], pair[1], k, kind)
    raise ValueError(
        f"{where}: expected a number α, a list of {k} weights or a mapping attribute → weight; got {entry!r}"
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


def resolve_mixture_grid(
    attributes: Sequence[str],
    attribute_a: str | None,
    attribute_b: str | None,
    train_alpha: float | None = None,
    train_mixtures: Sequence[MixtureEntry] | None = None,
    train_shares: Sequence[float] | None = None,
    val_alphas: Sequence[float] | None = None,
    val_mixtures: Sequence[MixtureEntry] | None = None,
    kind: str = "convex",
    default_alpha: float = 0.1,
    default_val_alphas: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    prefix: str = "data.",
) -> MixtureGrid:
    """Turn a DataModule's mixture arguments into a :class:`MixtureGrid`, with errors naming the YAML key."""
    attributes = list(attributes)
    if kind not in KINDS:
        raise ValueError(f"{prefix}mixture_kind must be one of {KINDS}, got {kind!r}")
    pair = None
    if attribute_a is not None or attribute_b is not None:
        if attribute_a is None or attribute_b is None:
            raise ValueError(f"{prefix}attribute_a and {prefix}attribute_b must be given together")
        for key, name in (("attribute_a", attribute_a), ("attribute_b", attribute_b)):
            if name not in attributes:
                raise ValueError(f"{prefix}{key}: unknown attribute {name!r}; the attributes are {attributes}")
        if attribute_a == attribute_b:
            raise ValueError(f"{prefix}attribute_a and {prefix}attribute_b must differ, both are {attribute_a!r}")
        pair = (attributes.index(attribute_a), attributes.index(attribute_b))

    if train_alpha is not None and train_mixtures is not None:
        raise ValueError(f"give one of {prefix}train_alpha and {prefix}train_mixtures, not both")
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
            raise ValueError(f"{prefix}val_alphas needs {prefix}attribute_a and {prefix}attribute_b")
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
