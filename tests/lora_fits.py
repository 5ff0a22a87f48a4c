"""Test helpers shared by the adapter and export tests: a short real fit, and log-probs computed independently of
the package (an explicit log-softmax and gather)."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning as L
import torch

from rdpo_lightning.data import AttributeWorldDataModule
from rdpo_lightning.training.module import RobustDPO
from rdpo_lightning.training.quiet import quiet_trainer


def brute_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sequence log-probs (sums over response tokens), float64."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    labels = batch["labels"][:, 1:]
    logps = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logps * (labels != -100)).sum(-1)


def make_data(model_dir: Path, **kwargs) -> AttributeWorldDataModule:
    args = {"num_train": 8, "num_val": 4, "val_alphas": [], "batch_size": 8, "max_length": 24}
    return AttributeWorldDataModule(**{**args, **kwargs}, tokenizer_dir=str(model_dir))


def fit(
    model_dir: Path,
    cache: Path,
    steps: int = 1,
    data: dict | None = None,
    fit_args: dict | None = None,
    trainer_args: dict | None = None,
    **module_args,
) -> RobustDPO:
    """``steps`` SGD steps (lr 1, float64 unless ``torch_dtype`` says otherwise) of a RobustDPO on the world data;
    ``fit_args`` go to ``trainer.fit`` (``ckpt_path``), ``trainer_args`` to the Trainer (``callbacks``)."""
    L.seed_everything(0, verbose=False)
    args = {
        "model": str(model_dir),
        "optimizer": functools.partial(torch.optim.SGD, lr=1.0),
        "min_lr_ratio": 1.0,
        "gradient_clip_val": None,
        "torch_dtype": "float64",
        "reference_cache_dir": str(cache),
    }
    module = RobustDPO(**{**args, **module_args})
    trainer = quiet_trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        limit_val_batches=0,
        default_root_dir=cache,
        **(trainer_args or {}),
    )
    trainer.fit(module, datamodule=make_data(model_dir, **(data or {})), **(fit_args or {}))
    return module
