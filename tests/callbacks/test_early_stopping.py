"""Early stopping on the worst case, in a run built so that the worst case worsens while in-distribution improves.

Training pairs prefer the angrier response. Validation set "anger-wins" holds held-out pairs labelled the same way;
"anger-loses" holds the very same pairs with chosen and rejected swapped, so its per-pair loss is −log σ(−m) for the
margin m the policy learns on "anger-wins": the better the policy fits the training preference, the worse it does
there. EarlyStopping on ``val/worst_case/loss`` must stop after ``patience`` passes without improvement, while the
in-distribution loss keeps falling.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from torch.utils.data import DataLoader

from rdpo_lightning.callbacks import WorstCaseEvaluation
from rdpo_lightning.data import AttributeWorld
from rdpo_lightning.data.collate import PairCollator
from rdpo_lightning.data.tokenizer import load_tokenizer
from rdpo_lightning.training.module import RobustDPO
from rdpo_lightning.training.quiet import quiet_trainer


class ReversedShift(L.LightningDataModule):
    def __init__(self, tokenizer_dir: Path, num_train: int = 256, num_val: int = 64, batch_size: int = 32) -> None:
        super().__init__()
        self.tokenizer = load_tokenizer(tokenizer_dir)
        world, rng = AttributeWorld(), np.random.default_rng(0)
        anger = world.attribute_index("anger")

        def pairs(n: int) -> list[dict]:
            prompts = world.sample_prompts(n, rng)
            first, second = world.sample_responses(n, rng), world.sample_responses(n, rng)
            wins = world.attribute_rewards(first)[:, anger] > world.attribute_rewards(second)[:, anger]
            rows = []
            for prompt, a, b, first_wins in zip(prompts, first, second, wins, strict=True):
                chosen, rejected = (a, b) if first_wins else (b, a)
                rows.append({"prompt_ids": self._ids(prompt), "chosen_ids": self._ids(chosen, eos=True),
                             "rejected_ids": self._ids(rejected, eos=True)})  # fmt: skip
            return rows

        self.train_rows = pairs(num_train)
        val = pairs(num_val)
        swapped = [{**row, "chosen_ids": row["rejected_ids"], "rejected_ids": row["chosen_ids"]} for row in val]
        self.val_sets = {"anger-wins": val, "anger-loses": swapped}
        self.batch_size = batch_size

    def _ids(self, text: str, eos: bool = False) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=not eos)["input_ids"]
        return ids + [self.tokenizer.eos_token_id] if eos else ids

    @property
    def val_names(self) -> list[str]:
        return list(self.val_sets)

    def train_dataloader(self) -> DataLoader:
        collate = PairCollator(self.tokenizer.pad_token_id)
        return DataLoader(self.train_rows, batch_size=self.batch_size, shuffle=True, collate_fn=collate)

    def val_dataloader(self) -> list[DataLoader]:
        collate = PairCollator(self.tokenizer.pad_token_id)
        return [DataLoader(rows, batch_size=self.batch_size, collate_fn=collate) for rows in self.val_sets.values()]


class History(Callback):
    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.rows.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def test_early_stopping_stops_on_the_worst_case_while_in_distribution_improves(
    tiny_model_dir: Path, world_tokenizer_dir: Path
) -> None:
    L.seed_everything(0)
    stopper = EarlyStopping(monitor="val/worst_case/loss", mode="min", patience=2)
    history = History()
    trainer = quiet_trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=12,
        callbacks=[WorstCaseEvaluation(plot_name=None), stopper, history],
    )
    module = RobustDPO(model=str(tiny_model_dir), optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))
    trainer.fit(module, datamodule=ReversedShift(world_tokenizer_dir))

    worst = [row["val/worst_case/loss"] for row in history.rows]
    in_distribution = [row["val/anger-wins/loss"] for row in history.rows]
    assert len(history.rows) == 3 and stopper.stopped_epoch == 2 and trainer.current_epoch < 11
    assert worst == [row["val/anger-loses/loss"] for row in history.rows]  # the reversed set is the worst case
    assert all(row["val/worst_case/loss_at"] == 1.0 for row in history.rows)  # its index among the val sets
    assert worst[0] < worst[1] < worst[2]  # worsening from the first pass: patience 2 runs out after pass 3
    assert in_distribution[0] > in_distribution[1] > in_distribution[2]  # monitoring val/loss would not stop
    assert stopper.best_score.item() == worst[0]
