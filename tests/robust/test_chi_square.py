"""ChiSquareDRO's worst case checked without its formulas: it is feasible, no random feasible distribution beats it,
it meets the KKT conditions, and its value equals the minimum of the convex dual found by a golden-section search."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rdpo_lightning.robust import ChiSquareDRO, NoRobust, ScoredPairs
from tests.robust.fixed_weights import assert_gradient_is_fixed_weight_gradient

RNG = np.random.default_rng(7)
LOSS_SETS = {
    "close": [0.70, 0.69, 0.72, 0.68, 0.71, 0.70, 0.66, 0.73],  # nonnegativity slack at small rho
    "outliers": [0.1, 0.2, 0.15, 3.0, 0.12, 2.5, 0.3, 0.05, 0.2, 0.4],  # binds
    "tied maxima": [1.0, 4.0, 0.5, 4.0, 0.2, 1.5, 0.7, 0.1, 2.0, 0.3, 0.9, 1.1],
    "spread": RNG.gamma(0.5, 1.0, size=257).tolist(),
}
RHOS = [0.01, 0.5, 2.0, 10.0]


def divergence(p: np.ndarray) -> float:
    """½·(1/n)·Σ (n·p_i − 1)²: χ² divergence from uniform, with f(t) = ½(t − 1)²."""
    n = len(p)
    return float(0.5 * np.mean((n * p - 1) ** 2))


def dual(values: np.ndarray, rho: float, eta: float) -> float:
    """η + √((1+2ρ)/n)·‖(ℓ − η)_+‖₂ ≥ Σ p_i ℓ_i for every p in the ball and every η (weak duality)."""
    return eta + math.sqrt((1 + 2 * rho) / len(values)) * float(np.linalg.norm(np.maximum(values - eta, 0)))


def dual_minimum(values: np.ndarray, rho: float) -> float:
    """A golden-section search of the convex dual over η, on a bracket that holds its minimiser."""
    spread = values.max() - values.min() + 1
    low, high = values.min() - spread * (1 + math.sqrt(len(values) / (2 * rho))), values.max()
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(300):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if dual(values, rho, a) <= dual(values, rho, b):
            high = b
        else:
            low = a
    return dual(values, rho, (low + high) / 2)


def random_feasible_points(n: int, rho: float, count: int) -> list[np.ndarray]:
    """Points of the ball: uniform plus a zero-sum direction scaled to a random radius, kept when nonnegative; and
    uniform distributions on random subsets small enough to lie inside (divergence (n/k − 1)/2 ≤ ρ)."""
    points = []
    while len(points) < count:
        direction = RNG.normal(size=n) * (RNG.random(n) < 0.3 + 0.7 * RNG.random())
        direction -= direction.mean()
        if not direction.any():
            continue
        radius = rho * RNG.random() ** 0.2
        p = 1 / n + direction * math.sqrt(2 * radius / (n * float(direction @ direction)))
        if (p >= 0).all():
            points.append(p)
        k = RNG.integers(math.ceil(n / (1 + 2 * rho)), n + 1)
        subset = np.zeros(n)
        subset[RNG.choice(n, size=k, replace=False)] = 1 / k
        points.append(subset)
    return points


def worst_case(values: list[float], rho: float) -> tuple[np.ndarray, float, dict]:
    losses = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    out = ChiSquareDRO(rho=rho)(ScoredPairs(losses=losses))
    (weights,) = torch.autograd.grad(out.loss, losses)  # d(Σ p·ℓ)/dℓ = p
    return weights.numpy(), out.loss.item(), {k: v.item() for k, v in out.metrics.items()}


@pytest.mark.parametrize("rho", RHOS)
@pytest.mark.parametrize("case", list(LOSS_SETS))
def test_worst_case_is_feasible_unbeaten_and_equals_the_dual_minimum(case, rho):
    values = np.array(LOSS_SETS[case])
    p, objective, metrics = worst_case(LOSS_SETS[case], rho)
    assert (p >= 0).all() and p.sum() == pytest.approx(1, abs=1e-12)
    assert divergence(p) <= rho * (1 + 1e-9)
    assert objective == pytest.approx(float(p @ values), rel=1e-12)
    best_random = max(float(q @ values) for q in random_feasible_points(len(values), rho, 300))
    assert best_random <= objective + 1e-12
    assert objective == pytest.approx(dual_minimum(values, rho), rel=1e-9)
    assert metrics["weight_max"] == pytest.approx(p.max() * len(p), rel=1e-6)
    assert metrics["support_fraction"] == pytest.approx((p > 0).mean(), rel=1e-6)


INSIDE_THE_SIMPLEX = [  # balls that do not reach a point mass (divergence (n − 1)/2 > ρ)
    (case, rho) for case in ["close", "outliers", "spread"] for rho in RHOS if (len(LOSS_SETS[case]) - 1) / 2 > rho
]


@pytest.mark.parametrize("case, rho", INSIDE_THE_SIMPLEX)
def test_kkt_conditions(case, rho):
    """p_i = (ℓ_i − η)_+ / Z: one slope on the support, every unweighted loss below every weighted one, and the ball's
    constraint tight (a linear objective's maximum over a ball sits on its boundary when the ball does not reach a
    vertex of the simplex)."""
    values = np.array(LOSS_SETS[case])
    p, _, metrics = worst_case(LOSS_SETS[case], rho)
    support = p > 0
    assert support.sum() >= 2
    slope = np.polyfit(values[support], p[support], 1)
    assert np.abs(np.polyval(slope, values[support]) - p[support]).max() <= 1e-12
    assert slope[0] > 0
    if not support.all():
        assert values[~support].max() <= values[support].min()
        assert values[~support].max() <= metrics["threshold"] + 1e-6
    assert divergence(p) == pytest.approx(rho, rel=1e-9)
    assert metrics["ess_fraction"] == pytest.approx(1 / (1 + 2 * rho), rel=1e-6)


def test_small_rho_is_the_variance_expansion():
    """Nonnegativity slack: mean + √(2ρ·Var) and p_i = (1 + √(2ρ)(ℓ_i − ℓ̄)/σ)/n (Namkoong & Duchi 2017)."""
    values, rho = np.array(LOSS_SETS["close"]), 0.01
    p, objective, _ = worst_case(LOSS_SETS["close"], rho)
    sigma = values.std()
    assert objective == pytest.approx(values.mean() + math.sqrt(2 * rho) * sigma, rel=1e-12)
    expected = (1 + math.sqrt(2 * rho) * (values - values.mean()) / sigma) / len(values)
    assert p.tolist() == pytest.approx(expected.tolist(), rel=1e-10)


def test_a_ball_that_reaches_the_point_mass_puts_it_on_the_maxima():
    """n = 4 and 1 + 2ρ ≥ 4/2: uniform on the two tied maxima (divergence 1/2·(1/4)·(1+1+1+1) = 0.5 ≤ ρ)."""
    p, objective, _ = worst_case([1.0, 3.0, 0.5, 3.0], rho=0.5)
    assert p.tolist() == [0.0, 0.5, 0.0, 0.5] and objective == 3.0
    p, objective, _ = worst_case([2.0] * 5, rho=1.0)  # all equal: uniform
    assert p.tolist() == pytest.approx([0.2] * 5, rel=1e-15) and objective == pytest.approx(2.0, rel=1e-15)


def test_tiny_rho_approaches_the_mean():
    losses = torch.tensor(LOSS_SETS["outliers"], dtype=torch.float64)
    mean = NoRobust()(ScoredPairs(losses=losses)).loss.item()
    assert ChiSquareDRO(rho=1e-12)(ScoredPairs(losses=losses)).loss.item() == pytest.approx(mean, rel=1e-5)


def test_parameter_gradient_is_the_weighted_gradient():
    """∇_θ Σ p_i ℓ_i(θ) with p held fixed (Danskin), p found by the test's own bisection."""
    x = torch.randn(12, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    weights_of = lambda losses: torch.tensor(best_point_by_bisection(np.array(losses), 1.0))  # noqa: E731
    assert_gradient_is_fixed_weight_gradient(ChiSquareDRO(rho=1.0), weights_of, x, rtol=1e-9)


def best_point_by_bisection(values: np.ndarray, rho: float) -> np.ndarray:
    """p ∝ (ℓ − η)_+ with η found by bisection on the divergence (increasing in η), not by the strategy's sort."""
    low, high = values.min() - 1e6, values.max()
    for _ in range(200):
        eta = (low + high) / 2
        shifted = np.maximum(values - eta, 0)
        if shifted.sum() > 0 and divergence(shifted / shifted.sum()) > rho:
            high = eta
        else:
            low = eta
    shifted = np.maximum(values - low, 0)
    return shifted / shifted.sum()


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_bad_rho_rejected(bad):
    with pytest.raises(ValueError, match="rho"):
        ChiSquareDRO(rho=bad)
