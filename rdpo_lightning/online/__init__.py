"""Online robust preference optimisation: the policy's own completions, scored per attribute, paired each round
and trained over the mixtures (``docs/online.md``)."""

from rdpo_lightning.online.datamodule import OnlineWorldDataModule
from rdpo_lightning.online.generation import OnlineSampling
from rdpo_lightning.online.pairing import ONLINE_PAIRINGS, online_pairs

__all__ = ["ONLINE_PAIRINGS", "OnlineSampling", "OnlineWorldDataModule", "online_pairs"]
