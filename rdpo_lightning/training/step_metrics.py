"""What the module logs: TRL's metric set (implicit rewards, margins, accuracies, log-probs) of the pairs it scored,
under each prefix, and for a training step also its objective, the router term and the strategy's own numbers."""

from __future__ import annotations

import lightning as L
from torch import Tensor

from rdpo_lightning.robust import RobustOutput, ScoredPairs


def log_pair_metrics(module: L.LightningModule, stage: str, pairs: ScoredPairs, prefixes: list[str]) -> None:
    """The metric set under each prefix (``train``, ``val``); per step in training, per epoch otherwise."""
    losses = pairs.losses
    values = pairs.scores.metrics(module.beta)
    values["pair_loss" if stage == "train" else "loss"] = losses.detach().mean()
    on_step = stage == "train"
    for prefix in prefixes:
        for name, value in values.items():
            module.log(
                f"{prefix}/{name}",
                value,
                batch_size=losses.shape[0],
                on_step=on_step,
                on_epoch=not on_step,
                sync_dist=True,
                add_dataloader_idx=False,
                prog_bar=prefix == "val" and name in ("loss", "rewards/accuracies"),
            )


def log_training_step(module: L.LightningModule, pairs: ScoredPairs, result: RobustOutput, aux: Tensor | None) -> None:
    """``train/*`` describes the optimizer's batch (this rank's pairs of it; ``sync_dist`` averages ranks)."""
    log_pair_metrics(module, "train", pairs, prefixes=["train"])
    size = pairs.losses.shape[0]
    module.log("train/loss", result.loss.detach(), batch_size=size, sync_dist=True, prog_bar=True)
    if aux is not None:
        module.log("train/router_aux_loss", aux.detach(), batch_size=size, sync_dist=True)
    for name, value in result.metrics.items():
        module.log(f"train/robust/{name}", value, batch_size=size, sync_dist=True)
