"""An adapter-only checkpoint on 2 gloo CPU processes, under FSDP2 (a distributed checkpoint) or DDP (a file):
saved, restored, resumed.

Run as a script (Lightning re-executes it for rank 1): ``python _adapter_checkpoint.py MODEL_DIR OUT_DIR STRATEGY``
with STRATEGY ``fsdp2`` or ``ddp``.

1. ``uninterrupted``: a LoRA fit of 4 AdamW steps (3 batches an epoch) on the ``MODEL_DIR`` base, with a
   distributed-checkpoint directory ``OUT_DIR/checkpoints/step=<k>.ckpt`` after every step. As each is written,
   every rank writes the local shards of its trainable weights and of their optimizer moments to
   ``OUT_DIR/saved-step<k>-rank<r>.pt``; rank 0 writes the full policy at the end to ``OUT_DIR/uninterrupted.pt``.
2. ``resumed``: a new module and Trainer resume from ``step=2.ckpt`` (mid-epoch) to step 4; at ``on_train_start``
   (restored, no step taken) every rank writes its local shards to ``OUT_DIR/restored-rank<r>.pt`` (the base weights'
   too); rank 0 the full policy at the end to ``OUT_DIR/resumed.pt``.

``ADAPTER_ONLY=0`` in the environment writes full checkpoints instead (for comparison by hand).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import datasets
import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint
from peft import LoraConfig

from rdpo_lightning.data import AttributeWorldDataModule
from rdpo_lightning.robust import KLReweighter
from rdpo_lightning.training.module import RobustDPO
from rdpo_lightning.training.quiet import quiet_trainer
from rdpo_lightning.training.strategies import FSDP2Strategy

ADAPTER_ONLY = os.environ.get("ADAPTER_ONLY", "1") == "1"  # "0": full checkpoints, for comparison
STEPS, RESUME_AT = 4, 2
LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn", "c_fc"]}


def local(tensor: torch.Tensor) -> torch.Tensor:
    return (tensor.to_local() if hasattr(tensor, "to_local") else tensor).detach().clone()


def shards(module: RobustDPO, trainer: L.Trainer) -> dict[str, dict[str, torch.Tensor]]:
    """This rank's local shards: trainable weights, base weights, and the optimizer's moments by parameter name."""
    named = dict(module.policy.named_parameters())
    optimizer = trainer.optimizers[0]
    moments = {}
    for name, param in named.items():
        for slot, value in optimizer.state.get(param, {}).items():
            if torch.is_tensor(value) and value.dim() > 0:
                moments[f"{name}.{slot}"] = local(value)
    return {
        "trainable": {n: local(p) for n, p in named.items() if p.requires_grad},
        "base": {n: local(p) for n, p in named.items() if not p.requires_grad},
        "moments": moments,
    }


class RecordShards(L.Callback):
    """Every rank's local shards as each checkpoint is written (``saved-step<k>-rank<r>.pt``), or once the
    checkpoint is restored (``restored-rank<r>.pt``)."""

    def __init__(self, path: Path, when: str) -> None:
        self.path = path
        self.when = when

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: RobustDPO, checkpoint: dict) -> None:
        if self.when == "save":
            name = f"saved-step{trainer.global_step}-rank{dist.get_rank()}.pt"
            torch.save(shards(pl_module, trainer), self.path / name)

    def on_train_start(self, trainer: L.Trainer, pl_module: RobustDPO) -> None:
        if self.when == "restore":
            torch.save(shards(pl_module, trainer), self.path / f"restored-rank{dist.get_rank()}.pt")


def run(model_dir: str, out: Path, strategy: str, steps: int, ckpt_path: Path | None = None, callbacks=()) -> tuple:
    L.seed_everything(0, verbose=False)
    module = RobustDPO(
        model=model_dir,
        peft=LoraConfig(**LORA),
        robust=KLReweighter(tau=0.5),
        optimizer=functools.partial(torch.optim.AdamW, lr=0.05),
        torch_dtype="float64",
        reference_cache_dir=str(out / "cache"),
        adapter_only_checkpoints=ADAPTER_ONLY,
    )
    data = AttributeWorldDataModule(
        num_train=24, num_val=2, val_alphas=[], batch_size=4, max_length=24, tokenizer_dir=model_dir
    )
    trainer = quiet_trainer(
        accelerator="cpu",
        devices=2,
        strategy=FSDP2Strategy() if strategy == "fsdp2" else "ddp",
        max_steps=steps,
        limit_val_batches=0,
        enable_checkpointing=ckpt_path is None,  # the first fit writes a checkpoint after every step
        callbacks=list(callbacks),
    )
    trainer.fit(module, datamodule=data, ckpt_path=None if ckpt_path is None else str(ckpt_path))
    return module, trainer


def full_policy(module: RobustDPO) -> dict[str, torch.Tensor]:
    return {
        n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu().clone()
        for n, p in module.policy.named_parameters()
    }


def main() -> None:
    datasets.disable_progress_bars()
    model_dir, out_dir, strategy = sys.argv[1:]
    out = Path(out_dir)
    every_step = ModelCheckpoint(dirpath=out / "checkpoints", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    module, trainer = run(model_dir, out, strategy, STEPS, callbacks=[every_step, RecordShards(out, "save")])
    uninterrupted = full_policy(module)
    resume_from = out / "checkpoints" / f"step={RESUME_AT}.ckpt"
    restore = [RecordShards(out, "restore")]
    module, trainer = run(model_dir, out, strategy, STEPS, ckpt_path=resume_from, callbacks=restore)
    resumed = full_policy(module)
    if trainer.global_rank == 0:
        torch.save(resumed, out / "resumed.pt")
        torch.save(uninterrupted, out / "uninterrupted.pt")


if __name__ == "__main__":
    main()
