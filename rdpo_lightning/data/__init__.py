"""Preference data: the embedded attribute world, mixtures, real data sets, tokenisation and DataModules."""

from rdpo_lightning.data.datamodule import PreferenceDataModule
from rdpo_lightning.data.generate import SamplingConfig
from rdpo_lightning.data.mixture import Mixture, bradley_terry_labels, two_attribute_mixture
from rdpo_lightning.data.mixture_pairs import MixturePairsDataModule
from rdpo_lightning.data.pairwise import PairwisePreferenceDataModule
from rdpo_lightning.data.scored import ScoredCompletionsDataModule
from rdpo_lightning.data.world import AttributeWorld
from rdpo_lightning.data.world_data import AttributeWorldDataModule

__all__ = [
    "AttributeWorld",
    "AttributeWorldDataModule",
    "Mixture",
    "MixturePairsDataModule",
    "PairwisePreferenceDataModule",
    "PreferenceDataModule",
    "ScoredCompletionsDataModule",
    "SamplingConfig",
    "bradley_terry_labels",
    "two_attribute_mixture",
]
