"""Per-mixture metrics and generated rewards agree between 1 and 2 processes (gloo, ddp_spawn) on the same data.

37 pairs per validation set in batches of 8: one process sees 8, 8, 8, 8, 5; each of two processes sees 19 pairs
(8, 8, 3), one of them padded by the DistributedSampler with a repeat that must not be counted. Generation splits 7
prompts 4 + 3 (greedy, so the completions do not depend on the split).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rdpo_lightning.callbacks import GenerationEvaluation, WorstCaseEvaluation
from rdpo_lightning.data import AttributeWorldDataModule
from rdpo_lightning.training.module import RobustDPO
from rdpo_lightning.training.quiet import quiet_trainer
from tests.conftest import spawn_retrying_port_clash


def _validate(devices: int, policy: Path, reference: Path, tokenizer_dir: Path) -> dict[str, float]:
    datamodule = AttributeWorldDataModule(
        val_alphas=[0.0, 1.0], num_train=8, num_val=37, batch_size=8, max_length=32, tokenizer_dir=str(tokenizer_dir)
    )
    generation = GenerationEvaluation(num_prompts=7, batch_size=3, max_new_tokens=4, do_sample=False)
    trainer = quiet_trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        callbacks=[WorstCaseEvaluation(generation=generation, plot_name=None, print_table=False)],
    )
    module = RobustDPO(model=str(policy), reference=str(reference))
    spawn_retrying_port_clash(lambda: trainer.validate(module, datamodule=datamodule, verbose=False))
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning")
def test_metrics_agree_between_one_and_two_processes(
    tiny_model_dir: Path, tiny_reference_dir: Path, world_tokenizer_dir: Path
) -> None:
    one = _validate(1, tiny_model_dir, tiny_reference_dir, world_tokenizer_dir)
    two = _validate(2, tiny_model_dir, tiny_reference_dir, world_tokenizer_dir)
    keys = [k for k in one if k.startswith(("val/alpha=", "val/worst_case/", "val/reward/"))]
    assert len(keys) == 3 * 3 + 4 + 3 + 5 + 2  # per-mixture, worst case, rewards, attributes, reward worst case
    assert set(keys) <= set(two)
    for key in keys:
        assert two[key] == pytest.approx(one[key], rel=1e-6, abs=1e-7), key
