"""ExportBestCheckpoint exports the best checkpoint, not the last, whatever the layout of checkpoint callbacks: one
that keeps the best and ``last.ckpt`` (``save_last: true``, what configs/paper/*.yaml and configs/own_model.yaml set),
or one for the last state beside one for the best under its own name, in either order. The best is found here from the
validation losses the run logged and the weights it held at each pass, recorded by a callback of the test's own."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import AutoModelForCausalLM

from rdpo_lightning.callbacks import ExportBestCheckpoint
from rdpo_lightning.module import RobustDPO
from rdpo_lightning.quiet import quiet_trainer
from tests.lora_fits import make_data

STEPS = 4
#: mode max on the validation loss, which DPO lowers: the best pass is an early one, not the last. Saved after every
#: validation pass (with ``val_check_interval: 1`` Lightning would otherwise save at epoch ends only)
BEST = {"monitor": "val/loss", "mode": "max", "save_top_k": 1, "save_on_train_epoch_end": False}


class RecordValidation(L.Callback):
    """step → (validation loss, policy weights) at every validation pass."""

    def __init__(self) -> None:
        self.passes: dict[int, tuple[float, dict[str, torch.Tensor]]] = {}

    def on_validation_end(self, trainer: L.Trainer, pl_module: RobustDPO) -> None:
        weights = {k: v.detach().clone() for k, v in pl_module.policy.state_dict().items()}
        self.passes[trainer.global_step] = (float(trainer.callback_metrics["val/loss"]), weights)


LAYOUTS = {
    "best_and_last_in_one": lambda dirpath: [ModelCheckpoint(dirpath=dirpath, save_last=True, **BEST)],
    "last_then_best": lambda dirpath: [
        ModelCheckpoint(dirpath=dirpath, save_last=True, every_n_train_steps=1),
        ModelCheckpoint(dirpath=dirpath, filename="best-worst-case-{step}", **BEST),
    ],
    "best_then_last": lambda dirpath: [
        ModelCheckpoint(dirpath=dirpath, filename="best-worst-case-{step}", **BEST),
        ModelCheckpoint(dirpath=dirpath, save_last=True, every_n_train_steps=1),
    ],
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_the_best_not_the_last_is_exported(layout, tiny_model_dir, tmp_path):
    L.seed_everything(0, verbose=False)
    module = RobustDPO(
        model=str(tiny_model_dir),
        reference=None,
        optimizer=functools.partial(torch.optim.SGD, lr=2.0),
        torch_dtype="float64",
        reference_cache_dir=str(tmp_path / "cache"),
    )
    record, export = RecordValidation(), ExportBestCheckpoint(dirpath=str(tmp_path / "best"))
    trainer = quiet_trainer(
        accelerator="cpu",
        max_steps=STEPS,
        val_check_interval=1,
        limit_val_batches=1,
        enable_checkpointing=True,
        default_root_dir=tmp_path,
        callbacks=[*LAYOUTS[layout](tmp_path / "checkpoints"), record, export],
    )
    trainer.fit(module, datamodule=make_data(tiny_model_dir, num_train=16))
    losses = {step: loss for step, (loss, _) in record.passes.items()}
    best = max(losses, key=losses.get)
    assert sorted(losses) == list(range(1, STEPS + 1)) and best != STEPS, losses  # the best pass is not the last
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "best", dtype=torch.float64).state_dict()
    for name, want in record.passes[best][1].items():
        assert torch.equal(exported[name], want), name
    last = record.passes[STEPS][1]
    assert any(not torch.equal(exported[name], last[name]) for name in last)
