"""Pairwise preference losses: per-pair, pure functions of policy and reference log-probs."""

from rdpo_lightning.losses.base import PairLoss
from rdpo_lightning.losses.pairwise import HingeLoss, IPOLoss, RobustNoiseLoss, SigmoidLoss
from rdpo_lightning.losses.rpo import RPOLoss
from rdpo_lightning.losses.simpo import SimPOLoss

__all__ = ["PairLoss", "SigmoidLoss", "RobustNoiseLoss", "HingeLoss", "IPOLoss", "RPOLoss", "SimPOLoss"]
