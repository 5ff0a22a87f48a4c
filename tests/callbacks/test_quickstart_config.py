"""The quickstart YAML's evaluation callbacks parse through the CLI and write their tags and the PNG (shrunk run)."""

from __future__ import annotations

import glob
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rdpo_lightning.callbacks import WorstCaseEvaluation
from rdpo_lightning.cli import main

CONFIG = Path(__file__).parents[2] / "configs" / "quickstart.yaml"


def test_quickstart_logs_worst_case_and_reward_tags_and_writes_the_shift_curve(tmp_path: Path) -> None:
    cli = main(
        [
            "fit",
            "-c",
            str(CONFIG),
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.max_epochs=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--trainer.num_sanity_val_steps=0",
            "--data.init_args.num_train=16",  # 2 steps, validated every step: 2 passes, generation on the 2nd
            "--data.init_args.num_val=8",
            "--data.init_args.batch_size=8",
        ]
    )
    assert any(isinstance(c, WorstCaseEvaluation) for c in cli.trainer.callbacks)
    assert cli.trainer.early_stopping_callback.monitor == "val/worst_case/loss"
    assert cli.trainer.checkpoint_callback.monitor == "val/worst_case/loss"
    log_dir = Path(cli.trainer.log_dir)
    assert (log_dir / "shift_curve.png").is_file()
    events = EventAccumulator(glob.glob(str(log_dir / "events.out.tfevents*"))[0])
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    names = cli.datamodule.val_names
    assert {f"val/{n}/{m}" for n in names for m in ("loss", "accuracy")} <= scalars
    assert {f"val/reward/{n}" for n in names} <= scalars
    assert {"val/worst_case/loss", "val/worst_case/accuracy", "val/reward/worst_case", "val/loss"} <= scalars
    assert len(events.Scalars("val/worst_case/loss")) == 2 and len(events.Scalars("val/reward/worst_case")) == 1

    # last.ckpt, the documented resume point, is the newest state whether or not the worst case improved
    checkpoints = [c for c in cli.trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert [(c.monitor, bool(c.save_last)) for c in checkpoints] == [("val/worst_case/loss", False), (None, True)]
    last = torch.load(next(Path(tmp_path).rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert last["global_step"] == cli.trainer.global_step == 2
