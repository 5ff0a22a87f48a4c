"""ERM: the plain mean of the pair losses, i.e. ordinary DPO (or IPO, cDPO, ... per the pair loss)."""

from __future__ import annotations

from rdpo_lightning.robust.base import RobustLoss, RobustOutput, ScoredPairs


class NoRobust(RobustLoss):
    """Ordinary empirical risk: mean over the batch. DDP's gradient average makes it the global mean."""

    accumulation = "additive"

    def forward(self, batch: ScoredPairs) -> RobustOutput:
        return RobustOutput(loss=batch.losses.mean())
