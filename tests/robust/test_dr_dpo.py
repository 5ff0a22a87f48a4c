"""DrDPO against autograd of −β'·log mean exp(−ℓ/β') (its 2-process run is in test_group_robust_ddp.py)."""

from __future__ import annotations

import math

import pytest
import torch

from rdpo_lightning.robust import DrDPO, NoRobust, ScoredPairs

LOSSES = [0.3, 1.2, 0.05, 2.5, 0.7, 0.7]


def direct_objective(losses: torch.Tensor, beta_prime: float) -> torch.Tensor:
    return -beta_prime * torch.log(torch.mean(torch.exp(-losses / beta_prime)))


@pytest.mark.parametrize("beta_prime", [0.3, 1.0, 4.0])
def test_value_and_per_pair_weights_match_the_direct_objective(beta_prime):
    losses = torch.tensor(LOSSES, dtype=torch.float64, requires_grad=True)
    out = DrDPO(beta_prime=beta_prime)(ScoredPairs(losses=losses))
    out.loss.backward()
    ours = losses.grad.clone()
    reference = torch.tensor(LOSSES, dtype=torch.float64, requires_grad=True)
    objective = direct_objective(reference, beta_prime)
    objective.backward()
    assert out.loss.item() == pytest.approx(objective.item(), rel=1e-12)
    torch.testing.assert_close(ours, reference.grad, rtol=1e-12, atol=1e-15)
    assert ours.argmax().item() == LOSSES.index(min(LOSSES))  # the lowest loss weighs most
    assert out.metrics["weight_max"].item() == pytest.approx(ours.max().item() * len(LOSSES), rel=1e-6)


def test_parameter_gradient_matches_autograd():
    beta_prime = 0.7
    x = torch.tensor([[1.0, 2.0], [0.5, -1.0], [-2.0, 0.3], [0.1, 0.1]], dtype=torch.float64)
    theta = torch.tensor([0.4, -0.2], dtype=torch.float64, requires_grad=True)
    DrDPO(beta_prime)(ScoredPairs(losses=torch.nn.functional.softplus(-(x @ theta)))).loss.backward()
    ours = theta.grad.clone()
    theta.grad = None
    direct_objective(torch.nn.functional.softplus(-(x @ theta)), beta_prime).backward()
    torch.testing.assert_close(ours, theta.grad)


def test_limits_mean_and_minimum():
    losses = torch.tensor(LOSSES, dtype=torch.float64)
    mean = NoRobust()(ScoredPairs(losses=losses)).loss.item()
    assert DrDPO(beta_prime=1e6)(ScoredPairs(losses=losses)).loss.item() == pytest.approx(mean, rel=1e-5)
    small = DrDPO(beta_prime=1e-3)(ScoredPairs(losses=losses)).loss.item()
    assert small == pytest.approx(min(LOSSES) + 1e-3 * math.log(len(LOSSES)), abs=1e-6)


def test_finite_for_huge_losses_and_small_beta_prime():
    losses = torch.tensor([1e4, 3.0, 9999.0, 0.0], requires_grad=True)
    out = DrDPO(beta_prime=1e-4)(ScoredPairs(losses=losses))
    (grad,) = torch.autograd.grad(out.loss, losses)
    assert torch.isfinite(out.loss) and torch.isfinite(grad).all()


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf")])
def test_bad_beta_prime_rejected(value):
    with pytest.raises(ValueError, match="beta_prime"):
        DrDPO(beta_prime=value)
