"""The gradient a worst-case re-weighting must have (Danskin): Σ p_i ∇ℓ_i with p computed by the test and held
fixed, on a small linear model whose per-pair losses are softplus(−w·x) (shared by the CVaR and χ² tests)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from rdpo_lightning.robust import RobustLoss, ScoredPairs


def pair_losses(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.softplus(-model(x).squeeze(-1))


def fresh_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1).double()


def fixed_weight_gradient(weights_of: Callable[[list[float]], torch.Tensor], x: torch.Tensor):
    """(Σ p_i ℓ_i, its parameter gradients) with p = weights_of(the losses), one process."""
    model = fresh_model()
    losses = pair_losses(model, x)
    objective = (weights_of(losses.tolist()) * losses).sum()
    objective.backward()
    return objective.item(), [p.grad for p in model.parameters()]


def assert_gradient_is_fixed_weight_gradient(strategy: RobustLoss, weights_of, x: torch.Tensor, rtol: float) -> None:
    model = fresh_model()
    strategy(ScoredPairs(losses=pair_losses(model, x))).loss.backward()
    _, expected = fixed_weight_gradient(weights_of, x)
    for got, want in zip([p.grad for p in model.parameters()], expected, strict=True):
        torch.testing.assert_close(got, want, rtol=rtol, atol=1e-14)
