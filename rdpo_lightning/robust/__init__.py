"""Robust strategies: turn per-pair losses into the training objective. Chosen in YAML by ``class_path``."""

from rdpo_lightning.robust.base import PairBatch, RobustLoss, RobustOutput, ScoredPairs
from rdpo_lightning.robust.chi_square import ChiSquareDRO
from rdpo_lightning.robust.cvar import CVaR
from rdpo_lightning.robust.dr_dpo import DrDPO
from rdpo_lightning.robust.group_dro import GroupDRO
from rdpo_lightning.robust.kl import KLReweighter
from rdpo_lightning.robust.mixture_dro import MixtureDRO
from rdpo_lightning.robust.none import NoRobust
from rdpo_lightning.robust.wasserstein import WassersteinPenalty

__all__ = [
    "ScoredPairs",
    "PairBatch",
    "RobustLoss",
    "RobustOutput",
    "NoRobust",
    "KLReweighter",
    "WassersteinPenalty",
    "DrDPO",
    "GroupDRO",
    "CVaR",
    "ChiSquareDRO",
    "MixtureDRO",
]
