"""Preference mixtures: the vocabulary shared by the data labelled at a mixture and the strategies robust to it.

A mixture is a weight vector α on the simplex over K attributes. Training labels are drawn at one α₀; users who weigh
the attributes differently are other points α. Convex: r(α) = Σ_k α_k r_k. Geometric: r(α) = Π_k r_k^α_k (the
paper's r1^α·r2^(1−α)), computed in log space. In YAML a mixture is written one of three ways (:func:`parse_mixture`):
a number α (the paper's one-parameter family α·r_a + (1−α)·r_b between ``attribute_a`` and ``attribute_b``), a list of
K weights, or a mapping ``{attribute: weight}`` (unnamed attributes weigh 0).

A DataModule that knows each pair's K attribute score margins hands them on in the :data:`SCORE_MARGINS` column and
describes them with a :class:`MixtureSpace` (:mod:`rdpo_lightning.data.score_margins`); a strategy such as
:class:`~rdpo_lightning.robust.MixtureDRO` reads both. A leaf: ``data`` and ``robust`` import it, not each other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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


def vector_name(weights: Sequence[float], attributes: Sequence[str], digits: int = 2) -> str:
    """A readable name for a general α: its non-zero weights, e.g. ``anger=0.20,fear=0.80``."""
    return ",".join(f"{a}={w:.{digits}f}" for a, w in zip(attributes, weights, strict=True) if w > 0)


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


#: the per-pair column: K score differences, chosen minus rejected
SCORE_MARGINS = "score_margins"

#: The package's one rule for a tie, read by the data's pairing and by MixtureDRO's hard labels alike. float64 leaves
#: about 1e-16 of a number's size as rounding, so two completions scored the same can come out 1e-17 apart: two scores
#: within this fraction of the larger are equal (their margin is 0, :func:`equal_scores`), and a mixed margin α·Δ
#: within this fraction of Σ_k α_k·|Δ_k|, the size of the terms that cancelled, is a tie (:func:`tied`).
TIE_TOLERANCE = 1e-12


def equal_scores(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Where two scores are equal up to rounding: |a − b| ≤ TIE_TOLERANCE · max(|a|, |b|) (0 and 0 are equal)."""
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    return np.abs(first - second) <= TIE_TOLERANCE * np.maximum(np.abs(first), np.abs(second))


def tied(margin: Any, magnitude: Any) -> Any:
    """Where a mixed margin α·Δ is a tie: |α·Δ| ≤ TIE_TOLERANCE · Σ_k α_k·|Δ_k| (``magnitude``); numpy arrays or
    torch tensors, elementwise."""
    return abs(margin) <= TIE_TOLERANCE * magnitude


@dataclass(frozen=True)
class MixtureSpace:
    """The attributes behind a DataModule's ``score_margins`` and the mixtures its training pairs were labelled at.

    ``attributes``: the K names, in column order. ``kind``: ``convex`` or ``geometric`` (the margins are then of log
    scores). ``train``: the training mixture(s), one per group. ``pair``: the indices of ``data.attribute_a`` and
    ``data.attribute_b`` (the paper's one-parameter family α·r_a + (1 − α)·r_b), or None. ``train_keys``: how errors
    name the training mixtures (``data.train_alpha``, ``data.train_mixtures``)."""

    attributes: tuple[str, ...]
    kind: str
    train: tuple[Mixture, ...]
    pair: tuple[int, int] | None = None
    train_keys: str = "data.train_alpha"
