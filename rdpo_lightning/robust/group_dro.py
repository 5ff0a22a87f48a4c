"""Group DRO over preference groups (GRPO-style): the worst groups' losses get the weight.

Groups come from the data (a pair's mixture component, or a ``group`` column); each pair carries its id in
``ScoredPairs.groups``.
"""

from __future__ import annotations

import torch

from rdpo_lightning.checks import check_positive
from rdpo_lightning.errors import InputError
from rdpo_lightning.robust.base import RobustLoss, RobustOutput, ScoredPairs
from rdpo_lightning.robust.reweighting import weighted_objective


class GroupDRO(RobustLoss):
    """Online multiplicative weights over ``num_groups`` groups.

    Each step: the group mean losses ℓ_g over the *global* batch (losses and group ids gathered across data-parallel
    ranks, detached) update w_g ← w_g·exp(η·ℓ_g) for the groups present, then w is renormalised; the objective is
    Σ_g w_g ℓ_g / Σ_g w_g over the groups present in the batch (a group absent from a batch keeps its weight and
    neither moves nor dilutes the step). Each rank weights only its own pairs, by w_g / (n_g · Σ w), scaled by
    ``world_size``, so DDP's gradient average is the full-batch gradient; the returned loss's *value* is the global
    objective on every rank.

    The weights are a registered buffer (``group_weights``): saved in checkpoints, restored on resume, and identical on
    every rank because every rank computes the same update from the same gathered numbers. ``eta`` is the step size
    η (larger: faster moves toward the worst group).
    """

    def __init__(self, num_groups: int, eta: float = 0.01) -> None:
        super().__init__()
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"num_groups must be an integer >= 1, got {num_groups!r}")
        check_positive("eta", eta)
        self.num_groups = num_groups
        self.eta = float(eta)
        self.register_buffer("group_weights", torch.full((num_groups,), 1.0 / num_groups, dtype=torch.float64))

    def _apply(self, fn, recurse: bool = True):
        """Keep the weights in float64 when the module is cast (e.g. ``precision="bf16-true"``): the multiplicative
        updates compound, and a bfloat16 weight would lose them."""
        super()._apply(fn, recurse)
        self.group_weights = self.group_weights.to(torch.float64)
        return self

    def _check_groups(self, groups: torch.Tensor | None) -> torch.Tensor:
        if groups is None:
            raise InputError(
                "GroupDRO needs a group id per pair: use a DataModule that supplies a `group` column "
                "(several train_mixtures, or data.group_column)"
            )
        if groups.numel() and (groups.min() < 0 or groups.max() >= self.num_groups):
            raise InputError(
                f"group ids must lie in [0, {self.num_groups}) for model.robust.init_args.num_groups="
                f"{self.num_groups}; the batch has ids {sorted(set(groups.tolist()))}: set num_groups to the number of"
                " groups in the data"
            )
        return groups.long()

    def degeneracy(self, pairs: int) -> str | None:
        if pairs < self.num_groups:
            return (
                f"GroupDRO over num_groups={self.num_groups} sees {pairs} pairs per optimizer step: some group is"
                " absent from every step, and a group's weight only moves when it is present"
            )
        return super().degeneracy(pairs)

    @torch.no_grad()
    def update(self, global_losses: torch.Tensor, global_groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One multiplicative-weights step from the gathered losses; returns (group mean losses, counts)."""
        counts = torch.bincount(global_groups, minlength=self.num_groups).double()
        sums = torch.zeros(self.num_groups, dtype=torch.float64, device=global_losses.device)
        sums.index_add_(0, global_groups, global_losses.double())
        present = counts > 0
        means = torch.where(present, sums / counts.clamp(min=1), torch.zeros_like(sums))
        log_weights = self.group_weights.clamp(min=torch.finfo(torch.float64).tiny).log() + self.eta * means
        self.group_weights.copy_(torch.softmax(log_weights, dim=0))
        return means, counts

    def forward(self, batch: ScoredPairs) -> RobustOutput:
        losses = batch.losses
        groups = self._check_groups(batch.groups).to(losses.device)
        global_groups = self._check_groups(batch.gather(groups)).to(losses.device)
        global_losses = batch.gather(losses).to(losses.device)
        weights = self.group_weights.to(losses.device)
        if self.training:
            means, counts = self.update(global_losses, global_groups)
            weights = self.group_weights
        else:
            counts = torch.bincount(global_groups, minlength=self.num_groups).double()
            sums = torch.zeros(self.num_groups, dtype=torch.float64, device=losses.device)
            means = sums.index_add_(0, global_groups, global_losses.double()) / counts.clamp(min=1)
        present = counts > 0
        present_mass = weights[present].sum()
        pair_weights = (weights / (counts.clamp(min=1) * present_mass))[groups]
        objective = (weights[present] * means[present]).sum() / present_mass
        loss = weighted_objective(batch, pair_weights, objective)
        worst = means.masked_fill(~present, float("-inf")).max()
        metrics = {"worst_group_loss": worst.float(), "weight_max": weights.max().float()}
        if self.num_groups <= 8:
            metrics.update({f"group_weight/{g}": weights[g].float() for g in range(self.num_groups)})
        return RobustOutput(loss=loss, metrics=metrics)
