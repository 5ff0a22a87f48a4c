"""Mixtures of reward attributes and Bradley–Terry labelling: the source of *preference shift*.

A mixture is a weight vector α on the simplex over K attributes. Training labels are drawn at one α₀; users who weigh
the attributes differently are other points α. Convex: r(α) = Σ_k α_k r_k. Geometric: r(α) = Π_k r_k^α_k (the
paper's r1^α·r2^(1−α)), computed in log space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

KINDS = ("convex", "geometric")


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


def check_simplex(weights: Sequence[float], what: str = "mixture", length: int | None = None) -> None:
    """α must be finite, non-negative, sum to 1 (within 1e-6) and, when given, have ``length`` entries."""
    if length is not None and len(weights) != length:
        raise ValueError(f"{what} has {len(weights)} weights but there are {length} attributes")
    if len(weights) == 0:
        raise ValueError(f"{what} has no weights")
    for k, w in enumerate(weights):
        if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"{what}: weight {k} is {w!r}; weights must be finite and >= 0")
    total = float(sum(weights))
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"{what}: weights {list(weights)} sum to {total:g}, not 1")


def two_attribute_mixture(alpha: float, index_a: int, index_b: int, num_attributes: int, kind: str = "convex"):
    """The paper's one-parameter family α·r_a + (1−α)·r_b, named ``alpha=0.10``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    weights = [0.0] * num_attributes
    weights[index_a] += alpha
    weights[index_b] += 1.0 - alpha
    return Mixture(tuple(weights), name=f"alpha={alpha:.2f}", kind=kind)


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
