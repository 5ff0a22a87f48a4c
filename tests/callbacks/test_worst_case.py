"""WorstCaseEvaluation against a hand computation: per-mixture loss, accuracy and margin from an independent
log-prob loop over the same validation batches, and the worst case as the max / min over mixtures."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM

from rdpo_lightning.callbacks import WorstCaseEvaluation
from rdpo_lightning.callbacks.report import MixtureResult, ShiftReport, format_table, mixture_coordinates
from rdpo_lightning.data import AttributeWorldDataModule
from rdpo_lightning.training.module import RobustDPO
from rdpo_lightning.training.quiet import quiet_trainer

BETA = 0.1


def _datamodule(tokenizer_dir: Path) -> AttributeWorldDataModule:
    return AttributeWorldDataModule(
        train_alpha=0.1,
        val_alphas=[0.0, 1.0],
        num_train=16,
        num_val=21,  # 21 = 2 batches of 8 + a short one of 5
        batch_size=8,
        max_length=32,
        tokenizer_dir=str(tokenizer_dir),
    )


def _sequence_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of log p(token) over response tokens, one row at a time, without padding."""
    out = []
    for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True):
        length = int(mask.sum())
        logits = model(input_ids=ids[None, :length]).logits[0]
        logp = F.log_softmax(logits.double(), -1)[:-1].gather(-1, ids[1:length, None])[:, 0]
        out.append(logp[labels[1:length] != -100].sum())
    return torch.stack(out)


def _by_hand(policy_dir: Path, reference_dir: Path, datamodule: AttributeWorldDataModule) -> dict[str, dict]:
    policy = AutoModelForCausalLM.from_pretrained(policy_dir).eval()
    reference = AutoModelForCausalLM.from_pretrained(reference_dir).eval()
    results = {}
    with torch.no_grad():
        for name, loader in zip(datamodule.val_names, datamodule.val_dataloader(), strict=True):
            losses, correct, margins = [], [], []
            for batch in loader:
                half = batch["input_ids"].shape[0] // 2
                ratios = _sequence_logps(policy, batch) - _sequence_logps(reference, batch)
                chosen, rejected = BETA * ratios[:half], BETA * ratios[half:]
                losses += (-F.logsigmoid(chosen - rejected)).tolist()
                correct += (chosen > rejected).double().tolist()
                margins += (chosen - rejected).tolist()
            results[name] = {
                "loss": sum(losses) / len(losses),
                "accuracy": sum(correct) / len(correct),
                "margin": sum(margins) / len(margins),
                "count": len(losses),
            }
    return results


def test_per_mixture_metrics_and_worst_case_match_a_hand_computation(
    tiny_model_dir: Path, tiny_reference_dir: Path, world_tokenizer_dir: Path, tmp_path: Path, capsys
) -> None:
    datamodule = _datamodule(world_tokenizer_dir)
    callback = WorstCaseEvaluation()
    trainer = quiet_trainer(
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(tmp_path, name="tb"),
        callbacks=[callback],
    )
    module = RobustDPO(model=str(tiny_model_dir), reference=str(tiny_reference_dir), beta=BETA)
    trainer.validate(module, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    expected = _by_hand(tiny_model_dir, tiny_reference_dir, datamodule)
    assert list(expected) == ["alpha=0.10", "alpha=0.00", "alpha=1.00"]
    assert all(e["count"] == 21 for e in expected.values())
    for name, values in expected.items():
        for metric in ("loss", "accuracy", "margin"):
            assert metrics[f"val/{name}/{metric}"] == pytest.approx(values[metric], rel=1e-5, abs=1e-6), (name, metric)

    worst_loss = max(expected, key=lambda n: expected[n]["loss"])
    worst_accuracy = min(expected, key=lambda n: expected[n]["accuracy"])
    assert metrics["val/worst_case/loss"] == pytest.approx(expected[worst_loss]["loss"], rel=1e-5)
    assert metrics["val/worst_case/accuracy"] == pytest.approx(expected[worst_accuracy]["accuracy"], rel=1e-5)
    assert metrics["val/worst_case/loss_at"] == float(worst_loss.split("=")[1])
    assert metrics["val/worst_case/accuracy_at"] == float(worst_accuracy.split("=")[1])
    # the module's own in-distribution metrics still come from dataloader 0
    assert metrics["val/loss"] == pytest.approx(metrics["val/alpha=0.10/loss"], rel=1e-5)

    # the validate table, the PNG next to the logs and the TensorBoard figure
    printed = capsys.readouterr().out
    assert "Per-mixture validation" in printed and "alpha=0.10 (train)" in printed and "worst case" in printed
    assert f"{expected[worst_loss]['loss']:.4f}" in printed
    log_dir = Path(trainer.log_dir)
    assert (log_dir / "shift_curve.png").stat().st_size > 1000
    events = EventAccumulator(glob.glob(str(log_dir / "events.out.tfevents*"))[0], size_guidance={"images": 0})
    events.Reload()
    assert "val/shift_curve" in events.Tags()["images"]
    assert {"val/alpha=1.00/loss", "val/worst_case/loss", "val/worst_case/accuracy"} <= set(events.Tags()["scalars"])


def test_mixture_coordinates_use_alpha_names_else_the_order() -> None:
    assert mixture_coordinates(["alpha=0.10", "alpha=1.00"]) == ([0.1, 1.0], "α")
    assert mixture_coordinates(["alpha=0.10", "helpful"]) == ([0.0, 1.0], "mixture")


def test_table_marks_the_training_mixture_and_the_worst_case() -> None:
    report = ShiftReport(
        [MixtureResult("a", loss=0.5, accuracy=0.9, in_distribution=True), MixtureResult("b", loss=0.8, accuracy=0.6)],
        worst={"loss": (0.8, "b"), "accuracy": (0.6, "b")},
    )
    lines = format_table(report).splitlines()
    assert lines[2].startswith("a (train)") and "0.5000" in lines[2]
    assert lines[-2].startswith("worst case") and "0.8000" in lines[-2] and "0.6000" in lines[-2]
    assert "reward" not in lines[0] and "margin" not in lines[0]  # columns never measured are left out


def test_table_keeps_long_worst_case_names_apart() -> None:
    """Set names of 12 characters or more (``group=cheerful``) once ran together in the 'at' row."""
    report = ShiftReport(
        [MixtureResult("held_out", loss=0.5, accuracy=0.9), MixtureResult("group=cheerful", loss=0.8, accuracy=0.6)],
        worst={"loss": (0.8, "group=cheerful"), "accuracy": (0.6, "group=cheerful")},
    )
    assert format_table(report).splitlines()[-1].split() == ["at", "group=cheerful", "group=cheerful"]
