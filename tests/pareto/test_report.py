"""``rdpo pareto`` on real TensorBoard runs of tiny fits: the points it reads are the values the callbacks logged
(recorded independently during the fits), its verdict gaps follow from them, and it draws a PNG and a TensorBoard
figure."""

from __future__ import annotations

import glob
import math
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rdpo_lightning.callbacks import WorstCaseEvaluation
from rdpo_lightning.data import AttributeWorldDataModule
from rdpo_lightning.pareto import Point, mean_gap, read_scalars, run_directories
from rdpo_lightning.pareto.report import main
from rdpo_lightning.robust import KLReweighter, NoRobust
from rdpo_lightning.training.module import RobustDPO
from rdpo_lightning.training.quiet import quiet_trainer
from tests.conftest import TINY_GPT2

ROOT = Path(__file__).resolve().parents[2]
SEEDS = (0, 1, 2)


class Recorder(Callback):
    """What the trainer held after each validation pass, keyed by step: the independent record of the logs."""

    def __init__(self) -> None:
        self.passes: dict[int, dict[str, float]] = {}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.passes[trainer.global_step] = {k: float(v) for k, v in trainer.callback_metrics.items()}


def fit(root: Path, name: str, robust, seed: int, tokenizer_dir: Path) -> dict[int, dict[str, float]]:
    L.seed_everything(seed, verbose=False)
    datamodule = AttributeWorldDataModule(
        train_alpha=0.1, val_alphas=[0.0, 1.0], num_train=48, num_val=24, batch_size=8, max_length=32, seed=seed,
        tokenizer_dir=str(tokenizer_dir),
    )  # fmt: skip
    module = RobustDPO(model_config=dict(TINY_GPT2), beta=0.1, robust=robust, warmup_steps=0)
    recorder = Recorder()
    trainer = quiet_trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        val_check_interval=2,  # 6 batches: passes at steps 2, 4, 6
        logger=TensorBoardLogger(root, name=name, version=f"seed{seed}"),
        callbacks=[WorstCaseEvaluation(plot_name=None, print_table=False), recorder],
    )
    trainer.fit(module, datamodule)
    return recorder.passes


@pytest.fixture(scope="module")
def runs(tmp_path_factory, world_tokenizer_dir):
    root = tmp_path_factory.mktemp("pareto_runs")
    recorded = {}
    for name, make in (("DPO", NoRobust), ("KLDPO", lambda: KLReweighter(tau=0.25))):
        for seed in SEEDS:
            recorded[name, seed] = fit(root, name, make(), seed, world_tokenizer_dir)
    return root, recorded


def test_events_hold_every_validation_pass_with_the_logged_values(runs):
    root, recorded = runs
    directory = run_directories(root / "DPO" / "seed1")
    assert directory == [root / "DPO" / "seed1"]
    scalars = read_scalars(directory[0])
    passes = recorded["DPO", 1]
    assert sorted(passes) == [2, 4, 6]
    for tag in ("val/loss", "val/worst_case/loss", "val/rewards/accuracies", "val/worst_case/accuracy"):
        logged = [scalars[tag][step] for step in sorted(scalars[tag])]  # Lightning logs a pass at its step - 1
        assert logged == pytest.approx([passes[step][tag] for step in sorted(passes)], rel=1e-6), tag


def test_cli_judges_from_the_logged_values_and_draws_png_and_tensorboard_figures(runs, tmp_path: Path, capsys):
    root, recorded = runs
    argv = [f"--run={m}@{s}={root / m / f'seed{s}'}" for m in ("DPO", "KLDPO") for s in SEEDS]
    out = tmp_path / "front.png"
    text = main([*argv, "--metric", "loss", "--metric", "accuracy", "--out", str(out), "--tensorboard", str(tmp_path)])
    assert out.read_bytes().startswith(b"\x89PNG") and out.stat().st_size > 10_000
    events = EventAccumulator(glob.glob(str(tmp_path / "events.out.tfevents*"))[0], size_guidance={"images": 0})
    events.Reload()
    assert "pareto/fronts" in events.Tags()["images"]
    assert "pareto/verdicts/text_summary" in events.Tags()["tensors"]

    loss_block, accuracy_block = text.split("\n\n")
    for block, x_tag, y_tag, sign in (
        (loss_block, "val/loss", "val/worst_case/loss", -1.0),
        (accuracy_block, "val/rewards/accuracies", "val/worst_case/accuracy", 1.0),
    ):
        line = next(row for row in block.splitlines() if row.startswith("KLDPO"))
        gaps = []
        for seed in SEEDS:
            kl = [Point(sign * m[x_tag], sign * m[y_tag]) for m in recorded["KLDPO", seed].values()]
            dpo = [Point(sign * m[x_tag], sign * m[y_tag]) for m in recorded["DPO", seed].values()]
            gaps.append(mean_gap(kl, dpo))
        assert all(math.isfinite(g) for g in gaps)
        assert " ".join(f"{g:+.4f}" for g in gaps) in line, (line, gaps)
        assert f"{sum(gaps) / 3:+.4f}" in line
        assert line.split()[1] == "3"


def test_console_script_and_bad_runs_fail_with_one_line(runs, tmp_path: Path):
    root, _ = runs
    command = [sys.executable, "-c", "from rdpo_lightning.cli import run; run()", "pareto"]
    ok = subprocess.run(
        [*command, f"--run=DPO@0={root / 'DPO' / 'seed0'}", f"--run=KLDPO@0={root / 'KLDPO' / 'seed0'}",
         "--out", str(tmp_path / "f.png")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "too few seeds" in ok.stdout
    bad = subprocess.run(
        [*command, f"--run=DPO@0={root / 'DPO' / 'seed0'}", "--x", "val/nowhere", "--y", "val/worst_case/loss"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()] and "val/nowhere" in bad.stderr
