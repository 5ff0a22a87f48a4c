"""Strategies whose objective is a worst-case re-weighting of the global batch, Σ p_i ℓ_i with p detached.

Every rank gathers the losses, derives the same weight rule from them, and weights only its own pairs; the loss is
scaled so that DDP's gradient average is the gradient of the global objective (Danskin: the worst case's gradient is
Σ p_i ∇ℓ_i at the maximising p).
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from rdpo_lightning.robust.base import RobustLoss, RobustOutput, ScoredPairs, effective_sample_fraction


def weighted_objective(batch: ScoredPairs, local_weights: Tensor, objective: Tensor) -> Tensor:
    """The per-rank loss of a strategy with detached global weights: Σ w_i ℓ_i over this rank's pairs, scaled by
    ``world_size`` so that DDP's gradient average is the gradient of the global Σ w ℓ; its *value* is replaced by the
    global ``objective`` (the same on every rank), without touching the gradient."""
    losses = batch.losses
    surrogate = batch.world_size * (local_weights.to(losses.dtype) * losses).sum()
    return surrogate + (objective.to(surrogate.dtype) - surrogate).detach()


class WeightRule(Protocol):
    """Worst-case weights as a function of a pair's loss *value*, so a rank can weight its own pairs without knowing
    where they sit in the gathered batch. ``threshold``: the loss below which a pair gets no weight (logged)."""

    threshold: Tensor

    def __call__(self, losses: Tensor) -> Tensor: ...


class GlobalReweighting(RobustLoss):
    """Base of :class:`~rdpo_lightning.robust.CVaR` and :class:`~rdpo_lightning.robust.ChiSquareDRO`: subclasses
    say how the gathered losses give the weight rule. Logged: ``threshold``, ``weight_max`` (the largest weight
    relative to uniform), ``ess_fraction`` and ``support_fraction`` (the share of pairs with weight > 0)."""

    def point_mass(self, pairs: int) -> tuple[str, str] | None:
        """(why, what to change) when ``pairs`` pairs per optimizer step leave the ball only the point mass on the
        largest loss; None otherwise."""
        return None

    def degeneracy(self, pairs: int) -> str | None:
        found = self.point_mass(pairs)
        if found is None:
            return super().degeneracy(pairs)
        reason, remedy = found
        return f"{reason}: the objective is the single largest loss ({remedy}, or raise the optimizer batch)"

    def weight_rule(self, global_losses: Tensor) -> WeightRule:
        raise NotImplementedError

    def forward(self, batch: ScoredPairs) -> RobustOutput:
        global_losses = batch.gather(batch.losses)
        rule = self.weight_rule(global_losses)
        global_weights = rule(global_losses)
        loss = weighted_objective(batch, rule(batch.losses), (global_weights * global_losses.double()).sum())
        metrics = {
            "threshold": rule.threshold.float(),
            "weight_max": (global_weights.max() * global_weights.numel()).float(),
            "ess_fraction": effective_sample_fraction(global_weights),
            "support_fraction": (global_weights > 0).double().mean().float(),
        }
        return RobustOutput(loss=loss, metrics=metrics)
