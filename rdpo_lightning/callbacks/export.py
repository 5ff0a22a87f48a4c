"""Export the best checkpoint as a Hugging Face model when ``fit`` ends (what ``rdpo export`` does by hand)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from rdpo_lightning.checkpoints.export import export_checkpoint


def best_checkpoint_path(trainer: L.Trainer, monitor: str | None = None, fallback_to_last: bool = True) -> str:
    """The best checkpoint of the run's ``ModelCheckpoint`` callbacks: the best of the first that monitors a metric
    (``monitor``, if given), whatever their order. ``trainer.checkpoint_callback`` is only the *first*
    ``ModelCheckpoint``, and where that one keeps the last state (no monitor) its ``best_model_path`` is simply the
    latest file. With no monitored best, the last checkpoint if ``fallback_to_last``; "" when there is none."""
    callbacks = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    monitored = [c for c in callbacks if c.monitor is not None and monitor in (None, c.monitor)]
    for callback in monitored:
        if callback.best_model_path:
            return callback.best_model_path
    if not fallback_to_last:
        return ""
    latest = [c.last_model_path for c in callbacks if c.last_model_path]
    latest += [c.best_model_path for c in callbacks if c.monitor is None and c.best_model_path]
    return latest[0] if latest else ""


class ExportBestCheckpoint(Callback):
    """At the end of ``fit``, write the best checkpoint of the run's ``ModelCheckpoint`` (monitor it on
    ``val/worst_case/loss`` to select on the worst case) to ``dirpath``, as
    :func:`rdpo_lightning.checkpoints.export.export_checkpoint` does. Any layout of checkpoint callbacks works: one that
    keeps the best and ``last.ckpt`` (``save_last: true``), or one for the last state beside one for the best, in either
    order (:func:`best_checkpoint_path`).

    Args:
        dirpath: the model directory to write (replaced if it exists: it belongs to this run).
        adapter_only: write the PEFT adapter only instead of merged weights.
        fallback_to_last: with no best checkpoint (no monitored metric), export the last one instead.
        monitor: the metric whose best checkpoint to export, when several ``ModelCheckpoint`` callbacks monitor
            different ones (default: the first that monitors any).
    """

    def __init__(
        self, dirpath: str, adapter_only: bool = False, fallback_to_last: bool = True, monitor: str | None = None
    ) -> None:
        self.dirpath = dirpath
        self.adapter_only = adapter_only
        self.fallback_to_last = fallback_to_last
        self.monitor = monitor
        self.exported: Path | None = None
        self.source: str | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = best_checkpoint_path(trainer, self.monitor, self.fallback_to_last)
        if not path:
            raise ValueError(
                "ExportBestCheckpoint needs a ModelCheckpoint callback that saved a checkpoint (trainer.callbacks)"
            )
        trainer.strategy.barrier()  # every rank's shard of a distributed checkpoint is written
        self.source = path
        if trainer.is_global_zero:
            self.exported = export_checkpoint(path, self.dirpath, self.adapter_only, overwrite=True)
            rank_zero_info(f"exported {path} to {self.exported}")
        trainer.strategy.barrier()
