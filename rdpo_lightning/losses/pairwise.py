"""The standard pairwise preference losses (names as in TRL's ``loss_type``), as small modules chosen in YAML."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from rdpo_lightning.checks import check_probability
from rdpo_lightning.losses.base import PairLoss


class SigmoidLoss(PairLoss):
    """DPO (Rafailov et al.): −log σ(β·h); with ``label_smoothing`` ε > 0 it is conservative DPO (cDPO).

    h = chosen − rejected log-ratio. cDPO assumes each label is flipped with probability ε.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        check_probability("label_smoothing", label_smoothing, upper_open=False)
        self.label_smoothing = label_smoothing

    def forward(self, chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float) -> Tensor:
        logits = beta * (chosen_logratios - rejected_logratios)
        eps = self.label_smoothing
        return -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)


class RobustNoiseLoss(PairLoss):
    """rDPO (Chowdhury et al. 2024; TRL's ``robust``): an unbiased DPO loss under label noise rate ε.

    (−(1−ε)·log σ(βh) + ε·log σ(−βh)) / (1 − 2ε). Robust to *label noise*, unlike the distributionally robust
    strategies, which are robust to *preference shift*; the two compose.
    """

    def __init__(self, label_smoothing: float = 0.1) -> None:
        super().__init__()
        check_probability("label_smoothing", label_smoothing, upper_open=True)
        self.label_smoothing = label_smoothing

    def forward(self, chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float) -> Tensor:
        logits = beta * (chosen_logratios - rejected_logratios)
        eps = self.label_smoothing
        return (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)


class HingeLoss(PairLoss):
    """SLiC-style hinge: max(0, 1 − β·h)."""

    def forward(self, chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float) -> Tensor:
        return F.relu(1 - beta * (chosen_logratios - rejected_logratios))


class IPOLoss(PairLoss):
    """IPO (Azar et al.): (h − 1/(2β))², on length-normalised log-probs as in the IPO paper and TRL."""

    length_normalized = True

    def forward(self, chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float) -> Tensor:
        return (chosen_logratios - rejected_logratios - 1 / (2 * beta)) ** 2
