"""SimPO: a reference-free, length-normalised pairwise loss with a target margin."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from rdpo_lightning.checks import check_non_negative
from rdpo_lightning.losses.base import PairLoss
from rdpo_lightning.pair_scores import PairScores


class SimPOLoss(PairLoss):
    """SimPO (Meng, Xia & Chen 2024): −log σ(β/|y_w|·log π(y_w|x) − β/|y_l|·log π(y_l|x) − γ).

    The implicit reward is the policy's mean token log-prob, so no reference model or reference log-probs are used
    (``uses_reference = False``: the module builds and caches none) and β multiplies per-token means (the paper uses
    β ≈ 2–2.5, γ/β ≈ 0.3–0.5). ``gamma`` is the target reward margin γ (TRL's CPO ``simpo_gamma``, default 0.5).
    """

    length_normalized = True
    uses_reference = False

    def __init__(self, gamma: float = 0.5) -> None:
        super().__init__()
        check_non_negative("gamma", gamma)
        self.gamma = float(gamma)

    def forward(self, chosen_logps: Tensor, rejected_logps: Tensor, beta: float) -> Tensor:
        """From the policy's mean token log-probs of the chosen / rejected responses (B,)."""
        return -F.logsigmoid(beta * (chosen_logps - rejected_logps) - self.gamma)

    def pair_losses(self, scores: PairScores, beta: float) -> Tensor:
        return self(scores.policy.chosen, scores.policy.rejected, beta)
