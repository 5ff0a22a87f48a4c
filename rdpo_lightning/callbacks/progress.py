"""A progress bar that shows the project's metric names in full.

A bar's postfix is cut at the terminal's width (Lightning's rich bar cuts each name, ``val/worst_case/l…``) and
carries Lightning's ``v_num`` (the logger's version, shown as ``0.000``). This bar shows the training metrics only
and ends each validation pass with one line of its metrics, written above the bar.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class MetricsProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar without ``v_num`` and with validation metrics on a line of their own."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        return {name: value for name, value in metrics.items() if name != "v_num" and not name.startswith("val/")}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if trainer.state.fn == "fit" and not trainer.sanity_checking and trainer.is_global_zero:
            line = validation_line(trainer.global_step, trainer.progress_bar_metrics)
            if line:
                self.train_progress_bar.write(line)


def validation_line(step: int, metrics: dict[str, Any]) -> str | None:
    """``step 40: val/loss 0.6812  val/worst_case/loss 0.6950`` (the ``val/`` metrics the module shows), or None."""
    shown = {name: float(value) for name, value in metrics.items() if name.startswith("val/")}
    if not shown:
        return None
    return f"step {step}: " + "  ".join(
        f"{name} {value:.4f}" if math.isfinite(value) else f"{name} {value}" for name, value in shown.items()
    )
