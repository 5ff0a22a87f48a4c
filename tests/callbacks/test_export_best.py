"""ExportBestCheckpoint exports the best checkpoint, not the last, whatever the layout of checkpoint callbacks: one
monitored ``ModelCheckpoint`` that also keeps ``last.ckpt`` (``save_last: true``, what the shipped configs set before),
or the shipped configs' pair (configs/own_model.yaml, read here: a monitored ``best-worst-case-...`` checkpoint and
``LastCheckpoint`` for the last state), in either order. The best is found here from the worst-case losses the run
logged and the weights it held at each pass, recorded by a callback of the test's own."""

from __future__ import annotations

import functools
import importlib
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import AutoModelForCausalLM

from rdpo_lightning.callbacks import ExportBestCheckpoint, WorstCaseEvaluation
from rdpo_lightning.training.module import RobustDPO
from rdpo_lightning.training.quiet import quiet_trainer
from tests.lora_fits import make_data

STEPS = 4
MONITOR = "val/worst_case/loss"
SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "own_model.yaml"
#: mode max on the worst-case loss, which DPO lowers: the best pass is an early one, not the last. Saved after every
#: validation pass (with ``val_check_interval: 1`` Lightning would otherwise save at epoch ends only)
BEST = {"monitor": MONITOR, "mode": "max", "save_top_k": 1, "save_on_train_epoch_end": False}


class RecordValidation(L.Callback):
    """step → (validation loss, policy weights) at every validation pass."""

    def __init__(self) -> None:
        self.passes: dict[int, tuple[float, dict[str, torch.Tensor]]] = {}

    def on_validation_end(self, trainer: L.Trainer, pl_module: RobustDPO) -> None:
        weights = {k: v.detach().clone() for k, v in pl_module.policy.state_dict().items()}
        self.passes[trainer.global_step] = (float(trainer.callback_metrics[MONITOR]), weights)


def shipped(dirpath: Path) -> list[ModelCheckpoint]:
    """The checkpoint callbacks of configs/own_model.yaml, as the CLI builds them (monitored ones in mode max)."""
    callbacks = []
    for entry in yaml.safe_load(SHIPPED.read_text())["trainer"]["callbacks"]:
        module, name = entry["class_path"].rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
        if issubclass(cls, ModelCheckpoint):
            args = {**(entry.get("init_args") or {}), "dirpath": dirpath}
            callbacks.append(cls(**({**args, "mode": "max"} if args.get("monitor") else args)))
    assert len(callbacks) == 2 and sum(c.monitor is not None for c in callbacks) == 1
    return callbacks


LAYOUTS = {
    "best_and_last_in_one": lambda dirpath: [ModelCheckpoint(dirpath=dirpath, save_last=True, **BEST)],
    "shipped": shipped,
    "shipped_reversed": lambda dirpath: shipped(dirpath)[::-1],
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
        callbacks=[WorstCaseEvaluation(), *LAYOUTS[layout](tmp_path / "checkpoints"), record, export],
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
