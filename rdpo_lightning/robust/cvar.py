"""CVaR-DPO: the mean of the worst q-fraction of pair losses over the global batch."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from rdpo_lightning.checks import check_interval
from rdpo_lightning.robust.reweighting import GlobalReweighting


@dataclass(frozen=True)
class CVaRWeights:
    """The worst-case weights of CVaR at level q over n losses, as a rule that any rank applies to its own losses.

    CVaR_q is the largest Σ p_i ℓ_i over distributions with 0 ≤ p_i ≤ 1/(qn), Σ p_i = 1 (the dual of
    Rockafellar–Uryasev's min_t t + Σ(ℓ_i − t)_+/(qn)). With t the ⌈qn⌉-th largest loss (the value at risk), a loss
    above t gets 1/(qn) and the losses equal to t share the rest, 1 − #{ℓ > t}/(qn), equally. Without ties and qn
    fractional, that is the worst k = ⌊qn⌋ losses at 1/(qn) each plus the (k+1)-th at the *fractional boundary
    weight* (qn − k)/(qn): the standard CVaR of the empirical distribution, the mean of its worst q-tail. Splitting
    ties equally makes the weight a function of the loss value alone, so every rank weights its own pairs without
    knowing where they sit in the gathered batch.
    """

    threshold: Tensor
    above: float
    at: float

    @classmethod
    def solve(cls, global_losses: Tensor, worst_fraction: float) -> CVaRWeights:
        losses = global_losses.detach().double()
        n = losses.numel()
        tail = worst_fraction * n
        threshold = torch.topk(losses, math.ceil(tail - 1e-9 * tail)).values[-1]  # 1e-9: qn = 3.0000000000000004
        above = int((losses > threshold).sum())
        ties = int((losses == threshold).sum())
        return cls(threshold=threshold, above=1.0 / tail, at=(1.0 - above / tail) / ties)

    def __call__(self, losses: Tensor) -> Tensor:
        """The weights of ``losses`` (float64, detached)."""
        values = losses.detach().double()
        return (values > self.threshold).double() * self.above + (values == self.threshold).double() * self.at


class CVaR(GlobalReweighting):
    """Conditional value at risk of the pair losses over the *global* batch (losses all-gathered across ranks).

    The objective is the mean of the worst ``worst_fraction`` (q) of the losses, with the fractional boundary weight
    of :class:`CVaRWeights` when q·n is not an integer; q = 1 is the plain mean (DPO), q → 0 the largest loss. Its
    gradient is Σ_i p_i ∇ℓ_i with the worst-case weights p detached (a subgradient; with ties at the value at risk it
    is the one that splits their weight equally). Each rank weights only its own pairs and scales by ``world_size``,
    so DDP's gradient average is the full-batch gradient; the loss *value* is the global objective on every rank.

    Metrics (:class:`~rdpo_lightning.robust.reweighting.GlobalReweighting`): ``threshold`` is the value at risk t,
    ``weight_max`` about 1/q, ``ess_fraction`` and ``support_fraction`` about q.
    """

    def __init__(self, worst_fraction: float = 0.5) -> None:
        super().__init__()
        check_interval("worst_fraction", worst_fraction, 0.0, 1.0, open_low=True, open_high=False)
        self.worst_fraction = float(worst_fraction)

    def point_mass(self, pairs: int) -> tuple[str, str] | None:
        if self.worst_fraction * pairs >= 1:
            return None
        reason = (
            f"CVaR's worst_fraction={self.worst_fraction:g} of {pairs} pairs per optimizer step is less than one pair"
        )
        return reason, "raise model.robust.init_args.worst_fraction"

    def weight_rule(self, global_losses: Tensor) -> CVaRWeights:
        return CVaRWeights.solve(global_losses, self.worst_fraction)
