"""χ²-DRO: the worst case over a χ²-divergence ball around the uniform distribution of the global batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rdpo_lightning.checks import check_positive
from rdpo_lightning.robust.reweighting import GlobalReweighting


@dataclass(frozen=True)
class ChiSquareWeights:
    """The maximiser p of Σ p_i ℓ_i over {p ∈ simplex : ½·(1/n)·Σ (n·p_i − 1)² ≤ ρ}, as a rule any rank applies.

    The KKT conditions give p_i = (ℓ_i − η)_+ / Σ_j (ℓ_j − η)_+ with η chosen so that the constraint is tight,
    i.e. n·Σ p_i² = 1 + 2ρ (Levy, Carmon, Duchi & Sidford 2020, "Large-scale methods for distributionally robust
    optimization", χ² uncertainty set; the objective equals their dual min_η η + √((1+2ρ)/n)·‖(ℓ − η)_+‖₂). While η
    lies below every loss the nonnegativity constraint is slack and p_i = (1 + √(2ρ)·(ℓ_i − ℓ̄)/σ)/n, the objective
    ℓ̄ + √(2ρ)·σ (σ² the population variance: Namkoong & Duchi 2017's variance expansion). When it binds, η is solved
    exactly by sorting: with the losses in decreasing order, the support is the top k for the smallest k whose
    breakpoint η = ℓ_(k+1) already satisfies n·Σp² ≤ 1 + 2ρ, and on a top-k support with mean m and variance v,
    η = m − √(n·v / ((1+2ρ)·k − n)). When the ball reaches the point mass on the largest loss ((1+2ρ)·c ≥ n for c
    tied maxima), p is uniform over those maxima.
    """

    threshold: Tensor  # η, or the largest loss for the point mass
    normaliser: Tensor  # Σ (ℓ − η)_+, or the number of tied maxima
    point_mass: bool

    @classmethod
    def solve(cls, global_losses: Tensor, rho: float) -> ChiSquareWeights:
        losses = global_losses.detach().double()
        n = losses.numel()
        bound = 1 + 2 * rho  # n·Σp² at the boundary of the ball
        top = losses.max()
        maxima = (losses == top).sum()
        if bound * maxima >= n:
            return cls(threshold=top, normaliser=maxima.double(), point_mass=True)
        below = torch.sort(losses, descending=True).values - top  # ≤ 0, shifted for precision
        support = cls._support_size(below, bound)
        kept = below[:support]
        mean = kept.mean()
        variance = (kept - mean).pow(2).mean()
        threshold = top + mean - torch.sqrt(n * variance / (bound * support - n))
        return cls(threshold=threshold, normaliser=(losses - threshold).clamp(min=0).sum(), point_mass=False)

    @staticmethod
    def _support_size(descending: Tensor, bound: float) -> int:
        """The smallest k with n·Σp² ≤ bound at the breakpoint η = ℓ_(k+1) (support: the top k); n if none."""
        n = descending.numel()
        k = torch.arange(1, n, dtype=descending.dtype, device=descending.device)
        sums, squares = descending.cumsum(0)[:-1], descending.pow(2).cumsum(0)[:-1]
        nxt = descending[1:]
        mass = sums - k * nxt  # Σ_{i≤k} (ℓ_(i) − ℓ_(k+1))
        second = squares - 2 * nxt * sums + k * nxt.pow(2)  # Σ_{i≤k} (ℓ_(i) − ℓ_(k+1))²
        ratio = torch.where(mass > 0, n * second / mass.clamp(min=torch.finfo(mass.dtype).tiny).pow(2), torch.inf)
        inside = torch.nonzero(ratio <= bound)
        return int(inside[0]) + 1 if inside.numel() else n

    def __call__(self, losses: Tensor) -> Tensor:
        """The weights of ``losses`` (float64, detached)."""
        values = losses.detach().double()
        if self.point_mass:
            return (values == self.threshold).double() / self.normaliser
        return (values - self.threshold).clamp(min=0) / self.normaliser


class ChiSquareDRO(GlobalReweighting):
    """χ²-ball DRO: the largest Σ p_i ℓ_i over distributions p on the *global* batch (losses all-gathered across
    ranks) within χ²-divergence ``rho`` of uniform, D(p‖u) = ½·(1/n)·Σ (n·p_i − 1)² ≤ ρ (the Pearson χ² is 2ρ).

    The worst-case weights (:class:`ChiSquareWeights`) are detached, so the gradient is Σ p_i ∇ℓ_i (Danskin). For
    small ρ the objective is mean + √(2ρ·variance) of the losses; pairs below the dual threshold η get no weight once
    ρ is large. Each rank weights only its own pairs and scales by ``world_size``, so DDP's gradient average is the
    full-batch gradient; the loss *value* is the global objective on every rank.

    Metrics (:class:`~rdpo_lightning.robust.reweighting.GlobalReweighting`): ``threshold`` is η, ``ess_fraction``
    equals 1/(1+2ρ) whenever the ball's constraint binds, ``support_fraction`` is the share of pairs above η.
    """

    def __init__(self, rho: float = 0.5) -> None:
        super().__init__()
        check_positive("rho", rho)
        self.rho = float(rho)

    def point_mass(self, pairs: int) -> tuple[str, str] | None:
        if 1 + 2 * self.rho < pairs:
            return None
        reason = f"the χ² ball of rho={self.rho:g} over {pairs} pairs per optimizer step (1 + 2·rho >= pairs)"
        return f"{reason} holds the point mass", "lower model.robust.init_args.rho"

    def weight_rule(self, global_losses: Tensor) -> ChiSquareWeights:
        return ChiSquareWeights.solve(global_losses, self.rho)
