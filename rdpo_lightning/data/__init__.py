"""Preference data: the embedded attribute world, mixtures, tokenisation and DataModules."""

from rdpo_lightning.data.datamodule import AttributeWorldDataModule, PreferenceDataModule
from rdpo_lightning.data.mixture import Mixture, bradley_terry_labels, two_attribute_mixture
from rdpo_lightning.data.world import AttributeWorld

__all__ = [
    "AttributeWorld",
    "AttributeWorldDataModule",
    "Mixture",
    "PreferenceDataModule",
    "bradley_terry_labels",
    "two_attribute_mixture",
]
