"""Shared builders of the online tests: a tiny GPT-2 policy on the world's prompts, fitted a few steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from rdpo_lightning.online import OnlineSampling, OnlineWorldDataModule
from rdpo_lightning.training.module import RobustDPO
from rdpo_lightning.training.quiet import quiet_trainer


def build(
    model_dir: Path, cache: Path, robust=None, steps_per_round: int = 1, batch_size: int = 4, peft=None, **data: Any
):
    L.seed_everything(0, verbose=False)
    module = RobustDPO(
        model=str(model_dir), robust=robust, torch_dtype="float64", reference_cache_dir=str(cache), warmup_steps=0,
        peft=peft,
    )  # fmt: skip
    settings = dict(
        num_train=16, num_val=4, val_alphas=[1.0], batch_size=batch_size, max_length=24, tokenizer_dir=str(model_dir),
        steps_per_round=steps_per_round, generation=OnlineSampling(completions=3, max_new_tokens=6, batch_size=8),
        cache_dir=str(cache / "data"),
    )  # fmt: skip
    return module, OnlineWorldDataModule(**{**settings, **data})


def fit(module, datamodule, max_steps: int, callbacks=(), ckpt_path=None, **trainer: Any) -> L.Trainer:
    run = quiet_trainer(
        accelerator="cpu", max_steps=max_steps, limit_val_batches=1, num_sanity_val_steps=0, callbacks=list(callbacks),
        **trainer,
    )  # fmt: skip
    run.fit(module, datamodule=datamodule, ckpt_path=None if ckpt_path is None else str(ckpt_path))
    return run


class RecordBatches(L.Callback):
    """Every training batch this process saw (on the CPU), and the loss of each step."""

    def __init__(self) -> None:
        self.batches: list[dict[str, Any]] = []
        self.losses: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.batches.append({k: (v.cpu() if torch.is_tensor(v) else v) for k, v in batch.items()})

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))
