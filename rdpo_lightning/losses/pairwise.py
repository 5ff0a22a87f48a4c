"""The standard pairwise preference losses (names as in TRL's ``loss_type``), as small modules chosen in YAML."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from rdpo_lightning.checks import check_probability
from rdpo_lightning.losses.base import PairLoss


class LabelSmoothedLoss(PairLoss):
    """The logistic losses of both label orders, −log σ(β·h) and −log σ(−β·h), mixed by a label-noise rate ε
    (``label_smoothing``): subclasses say how (:meth:`mix`) and whether ε may reach ½ (``reaches_half``)."""

    reaches_half = True

    def __init__(self, label_smoothing: float) -> None:
        super().__init__()
        check_probability("label_smoothing", label_smoothing, upper_open=not self.reaches_half)
        self.label_smoothing = label_smoothing

    def forward(self, chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float) -> Tensor:
        logits = beta * (chosen_logratios - rejected_logratios)
        return self.mix(-F.logsigmoid(logits), -F.logsigmoid(-logits), self.label_smoothing)

    @staticmethod
    def mix(loss: Tensor, reversed_loss: Tensor, eps: float) -> Tensor:
        raise NotImplementedError


class SigmoidLoss(LabelSmoothedLoss):
    """DPO (Rafailov et al.): −log σ(β·h); with ``label_smoothing`` ε > 0 it is conservative DPO (cDPO).

    h = chosen − rejected log-ratio. cDPO assumes each label is flipped with probability ε.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__(label_smoothing)

    @staticmethod
    def mix(loss: Tensor, reversed_loss: Tensor, eps: float) -> Tensor:
        return (1 - eps) * loss + eps * reversed_loss


class RobustNoiseLoss(LabelSmoothedLoss):
    """rDPO (Chowdhury et al. 2024; TRL's ``robust``): an unbiased DPO loss under label noise rate ε.

    (−(1−ε)·log σ(βh) + ε·log σ(−βh)) / (1 − 2ε). Robust to *label noise*, unlike the distributionally robust
    strategies, which are robust to *preference shift*; the two compose.
    """

    reaches_half = False  # (1 − 2ε) divides

    def __init__(self, label_smoothing: float = 0.1) -> None:
        super().__init__(label_smoothing)

    @staticmethod
    def mix(loss: Tensor, reversed_loss: Tensor, eps: float) -> Tensor:
        return ((1 - eps) * loss - eps * reversed_loss) / (1 - 2 * eps)


class HingeLoss(PairLoss):
    """SLiC-style hinge: max(0, 1 − β·h)."""

    def forward(self, chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float) -> Tensor:
        return F.relu(1 - beta * (chosen_logratios - rejected_logratios))


class IPOLoss(PairLoss):
    """IPO (Azar et al.): (h − 1/(2β))², on length-normalised log-probs as in the IPO paper and TRL."""

    length_normalized = True

    def forward(self, chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float) -> Tensor:
        return (chosen_logratios - rejected_logratios - 1 / (2 * beta)) ** 2
