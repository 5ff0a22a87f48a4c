"""Dr. DPO: −β'·log mean exp(−ℓ_i/β'), a soft minimum that *down*-weights high-loss pairs (likely noisy labels)."""

from __future__ import annotations

import math

import torch

from rdpo_lightning.checks import check_positive
from rdpo_lightning.robust.base import (
    RobustLoss,
    RobustOutput,
    ScoredPairs,
    effective_sample_fraction,
    global_softmax_weights,
)
from rdpo_lightning.robust.reweighting import weighted_objective


class DrDPO(RobustLoss):
    """Distributionally robustifying DPO (Wu et al., 2024): objective −β'·log mean_i exp(−ℓ_i/β').

    Its gradient is Σ_i w_i ∇ℓ_i with w = softmax(−ℓ/β') over the *global* batch (detached), so pairs the policy
    finds implausible count less. Under data parallelism every rank computes the same normaliser from the gathered
    losses and weights only its own pairs; the loss is scaled by ``world_size`` so DDP's gradient average gives the
    single-process full-batch gradient. The returned loss *value* is the objective itself. ``beta_prime`` → ∞ gives
    the plain mean (DPO); small ``beta_prime`` approaches the minimum loss.
    """

    def __init__(self, beta_prime: float = 1.0) -> None:
        super().__init__()
        check_positive("beta_prime", beta_prime)
        self.beta_prime = float(beta_prime)

    accumulation = "softmax"

    @property
    def softmax_scale(self) -> float:
        return -1.0 / self.beta_prime

    def forward(self, batch: ScoredPairs) -> RobustOutput:
        losses = batch.losses
        weights = global_softmax_weights(losses, batch.gather, -self.beta_prime)
        global_losses = batch.gather(losses).double()
        objective = -self.beta_prime * (
            torch.logsumexp(-global_losses / self.beta_prime, dim=0) - math.log(global_losses.numel())
        )
        loss = weighted_objective(batch, weights, objective)
        global_weights = batch.gather(weights)
        metrics = {
            "weight_max": (global_weights.max() * global_weights.numel()).detach(),
            "ess_fraction": effective_sample_fraction(global_weights),
        }
        return RobustOutput(loss=loss, metrics=metrics)
