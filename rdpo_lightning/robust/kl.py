"""KLDPO: the worst case over a KL ball re-weights pairs, P(i) ∝ exp(ℓ_i / τ)."""

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


class KLReweighter(RobustLoss):
    """KL-ball DRO (KLDPO): high-loss pairs count more.

    ``normalize=True`` (default, the paper): weights softmax(ℓ/τ) over the *global* batch (losses all-gathered across
    data-parallel ranks), detached; the gradient is exactly that of τ·log mean exp(ℓ/τ). ``normalize=False`` (the
    authors' public code): w_i = min(exp((ℓ_i − mean ℓ)/τ), ``clamp_max``), not normalised, loss = mean w·ℓ, the mean
    ℓ taken over the global batch. Smaller τ → a larger ball → a more pessimistic objective.
    """

    def __init__(self, tau: float = 1.0, normalize: bool = True, clamp_max: float = 10.0) -> None:
        super().__init__()
        check_positive("tau", tau)
        check_positive("clamp_max", clamp_max)
        self.tau = float(tau)
        self.normalize = normalize
        self.clamp_max = float(clamp_max)

    @property
    def accumulation(self) -> str:
        """The normalised form is a softmax (one pass); the clamped form needs the window's mean loss first."""
        return "softmax" if self.normalize else "scored"

    @property
    def softmax_scale(self) -> float:
        return 1.0 / self.tau

    def forward(self, batch: ScoredPairs) -> RobustOutput:
        losses = batch.losses
        if self.normalize:
            weights = global_softmax_weights(losses, batch.gather, self.tau)
            loss = batch.world_size * (weights * losses).sum()
            global_weights = batch.gather(weights)
            relative_max = global_weights.max() * global_weights.numel()
        else:
            global_mean = batch.gather(losses).double().mean()
            exponent = ((losses.detach().double() - global_mean) / self.tau).clamp(max=math.log(self.clamp_max))
            weights = torch.exp(exponent).to(losses.dtype)
            loss = (weights * losses).mean()
            global_weights = batch.gather(weights)
            relative_max = global_weights.max() / global_weights.mean()
        metrics = {
            "weight_max": relative_max.detach(),
            "ess_fraction": effective_sample_fraction(global_weights),
        }
        return RobustOutput(loss=loss, metrics=metrics)
