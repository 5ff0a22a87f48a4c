"""Pairwise preference losses: per-pair, pure functions of policy and reference log-probs."""

from rdpo_lightning.losses.base import PairLoss
from rdpo_lightning.losses.pairwise import HingeLoss, IPOLoss, RobustNoiseLoss, SigmoidLoss

__all__ = ["PairLoss", "SigmoidLoss", "RobustNoiseLoss", "HingeLoss", "IPOLoss"]
