"""CVaR against a sort, against Rockafellar–Uryasev's minimisation, and its gradient against autograd."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rdpo_lightning.robust import CVaR, NoRobust, ScoredPairs
from tests.robust.fixed_weights import assert_gradient_is_fixed_weight_gradient

LOSSES = [0.3, 1.2, 0.05, 2.5, 0.7, 0.9, 4.0, 0.1, 1.7, 0.6]  # distinct


def sorted_tail_weights(values: list[float], q: float) -> np.ndarray:
    """The worst ⌊qn⌋ losses at 1/(qn) each, the next one at the rest (the fractional boundary weight): by a sort."""
    n = len(values)
    tail = q * n
    whole = math.floor(tail + 1e-9)
    weights = np.zeros(n)
    order = np.argsort(values)[::-1]
    weights[order[:whole]] = 1 / tail
    if whole < n:
        weights[order[whole]] = 1 - whole / tail
    return weights


def rockafellar_uryasev(values: list[float], q: float) -> float:
    """min_t t + Σ(ℓ − t)_+ / (qn): piecewise linear and convex in t, so its minimum sits at one of the losses."""
    x = np.array(values)
    return min(t + np.maximum(x - t, 0).sum() / (q * len(x)) for t in x)


@pytest.mark.parametrize("q", [1.0, 0.5, 0.35, 0.3, 0.25, 0.1, 0.04])
def test_value_and_weights_match_a_sort_and_the_minimisation(q):
    losses = torch.tensor(LOSSES, dtype=torch.float64, requires_grad=True)
    out = CVaR(worst_fraction=q)(ScoredPairs(losses=losses))
    (weights,) = torch.autograd.grad(out.loss, losses)
    expected = sorted_tail_weights(LOSSES, q)
    assert weights.tolist() == pytest.approx(expected.tolist(), rel=1e-12, abs=1e-15)
    assert out.loss.item() == pytest.approx(float(expected @ np.array(LOSSES)), rel=1e-12)
    assert out.loss.item() == pytest.approx(rockafellar_uryasev(LOSSES, q), rel=1e-12)
    kth = sorted(LOSSES, reverse=True)[math.ceil(q * len(LOSSES) - 1e-9) - 1]
    assert out.metrics["threshold"].item() == pytest.approx(kth, rel=1e-6)
    assert out.metrics["weight_max"].item() == pytest.approx(expected.max() * len(LOSSES), rel=1e-6)


def test_fractional_boundary_weight_written_out():
    """q·n = 2.5: the two largest at 1/2.5 = 0.4 each, the third at 0.2; CVaR = 0.4·4 + 0.4·2.5 + 0.2·1.7."""
    out = CVaR(worst_fraction=0.25)(ScoredPairs(losses=torch.tensor(LOSSES, dtype=torch.float64)))
    assert out.loss.item() == pytest.approx(0.4 * 4.0 + 0.4 * 2.5 + 0.2 * 1.7, rel=1e-12)


def test_ties_at_the_value_at_risk_share_the_boundary_weight():
    """Losses 3, 2, 2, 2, 1 at q·n = 2: the 3 gets 1/2 and the three tied 2s split the other 1/2 equally (each
    weight is then a function of the loss alone, so ranks agree without knowing where their pairs sit)."""
    losses = torch.tensor([2.0, 3.0, 2.0, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    out = CVaR(worst_fraction=0.4)(ScoredPairs(losses=losses))
    (weights,) = torch.autograd.grad(out.loss, losses)
    assert weights.tolist() == pytest.approx([1 / 6, 1 / 2, 1 / 6, 0.0, 1 / 6], rel=1e-12)
    assert out.loss.item() == pytest.approx(rockafellar_uryasev(losses.tolist(), 0.4), rel=1e-12)


def test_limits_mean_and_maximum():
    losses = torch.tensor(LOSSES, dtype=torch.float64)
    mean = NoRobust()(ScoredPairs(losses=losses)).loss.item()
    assert CVaR(worst_fraction=1.0)(ScoredPairs(losses=losses)).loss.item() == pytest.approx(mean, rel=1e-12)
    assert CVaR(worst_fraction=1e-6)(ScoredPairs(losses=losses)).loss.item() == pytest.approx(max(LOSSES), rel=1e-12)


def test_parameter_gradient_is_the_tail_mean_gradient():
    """∇_θ of the mean of the worst pairs (picked by the test's sort, held fixed), through autograd."""
    x = torch.randn(10, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    weights_of = lambda losses: torch.tensor(sorted_tail_weights(losses, 0.35))  # noqa: E731
    assert_gradient_is_fixed_weight_gradient(CVaR(worst_fraction=0.35), weights_of, x, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_training_dtypes_keep_the_loss_dtype_and_a_distribution(dtype):
    losses = torch.tensor(LOSSES, dtype=dtype, requires_grad=True)
    out = CVaR(worst_fraction=0.3)(ScoredPairs(losses=losses))
    assert out.loss.dtype == dtype
    (weights,) = torch.autograd.grad(out.loss, losses)
    assert weights.double().sum().item() == pytest.approx(1.0, abs=1e-2 if dtype == torch.bfloat16 else 1e-6)


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan"), "half", True])
def test_bad_worst_fraction_rejected(bad):
    with pytest.raises(ValueError, match="worst_fraction"):
        CVaR(worst_fraction=bad)
