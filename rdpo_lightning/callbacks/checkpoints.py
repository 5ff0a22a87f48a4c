"""``last.ckpt`` that holds the last state of a run.

Lightning's ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` beside a checkpoint it saves, and it saves at
the end of a validation pass (when its monitored metric improves, if it monitors one): a fit that stops between two
passes (``max_steps``, ``max_time``) or whose metric stops improving leaves ``last.ckpt`` several steps behind. The
shipped configs pair this callback (the last state, to resume from and to export) with a monitored
``ModelCheckpoint`` named ``best-worst-case-...`` (the best worst-case pass, what ``ExportBestCheckpoint`` writes).
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` after every validation pass and when ``fit`` ends, always at the run's latest step.

    Args:
        dirpath: where to write (default: the logger's ``checkpoints`` directory, as ``ModelCheckpoint``).
    """

    def __init__(self, dirpath: str | None = None) -> None:
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write_last(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write_last(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write_last(trainer)

    def _write_last(self, trainer: L.Trainer) -> None:
        # skipped under fast_dev_run, outside fit, in the sanity check, and when this step is written already
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
