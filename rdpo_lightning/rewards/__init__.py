"""Reward functions that score texts on named attributes, for labelling mixtures and scoring generations."""

from rdpo_lightning.rewards.base import RewardFunction
from rdpo_lightning.rewards.callable import CallableReward
from rdpo_lightning.rewards.classifier import SequenceClassifierReward
from rdpo_lightning.rewards.combined import PerAttributeRewards
from rdpo_lightning.rewards.world import AttributeWorldReward

__all__ = [
    "AttributeWorldReward",
    "CallableReward",
    "PerAttributeRewards",
    "RewardFunction",
    "SequenceClassifierReward",
]
