"""Training: the LightningModule, the optimizer batch it forms its objective over, its reference log-probs, its
guards and schedule, and the FSDP2 strategy. A batch goes: DataModule → :class:`RobustDPO` (``training_step``) →
the policy's scores (:mod:`rdpo_lightning.models.scoring`) → the pair loss → the robust strategy → backward."""

from rdpo_lightning.training.module import RobustDPO
from rdpo_lightning.training.strategies import FSDP2Strategy

__all__ = ["FSDP2Strategy", "RobustDPO"]
