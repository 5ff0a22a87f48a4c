"""Export the best checkpoint as a Hugging Face model when ``fit`` ends (what ``rdpo export`` does by hand)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info


class ExportBestCheckpoint(Callback):
    """At the end of ``fit``, write the best checkpoint of the run's ``ModelCheckpoint`` (monitor it on
    ``val/worst_case/loss`` to select on the worst case) to ``dirpath``, as
    :func:`rdpo_lightning.export.export_checkpoint` does.

    Args:
        dirpath: the model directory to write (replaced if it exists: it belongs to this run).
        adapter_only: write the PEFT adapter only instead of merged weights.
        fallback_to_last: with no best checkpoint (no monitored metric), export the last one instead.
    """

    def __init__(self, dirpath: str, adapter_only: bool = False, fallback_to_last: bool = True) -> None:
        self.dirpath = dirpath
        self.adapter_only = adapter_only
        self.fallback_to_last = fallback_to_last
        self.exported: Path | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = best_checkpoint(trainer)
        if not path and self.fallback_to_last:
            path = next((c.last_model_path for c in trainer.checkpoint_callbacks if c.last_model_path), "")
        if not path:
            raise ValueError(
                "ExportBestCheckpoint needs a ModelCheckpoint callback that saved a checkpoint (trainer.callbacks)"
            )
        trainer.strategy.barrier()  # every rank's shard of a distributed checkpoint is written
        if trainer.is_global_zero:
            from rdpo_lightning.export import export_checkpoint

            self.exported = export_checkpoint(path, self.dirpath, self.adapter_only, overwrite=True)
            rank_zero_info(f"exported {path} to {self.exported}")
        trainer.strategy.barrier()


def best_checkpoint(trainer: L.Trainer) -> str:
    """The best checkpoint of the first ``ModelCheckpoint`` that monitors a metric (the shipped configs: on
    ``val/worst_case/loss``; :class:`~rdpo_lightning.callbacks.LastCheckpoint` beside it monitors none), else of the
    first one; "" when none saved one."""
    callbacks = trainer.checkpoint_callbacks
    monitored = [c for c in callbacks if getattr(c, "monitor", None) is not None] or callbacks[:1]
    return next((c.best_model_path for c in monitored if c.best_model_path), "")
