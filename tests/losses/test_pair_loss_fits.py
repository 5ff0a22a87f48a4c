"""RPOLoss and SimPOLoss inside the module: validation losses of a real model equal the closed forms computed from
one-row per-token loops, SimPO builds no reference, and both train through the CLI under KLDPO and WDPO."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch

from rdpo_lightning.cli import main
from rdpo_lightning.data import AttributeWorldDataModule
from rdpo_lightning.losses import RPOLoss, SimPOLoss
from rdpo_lightning.training.module import RobustDPO
from rdpo_lightning.training.quiet import quiet_trainer
from tests.cli.test_cli import small_run_args

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
NUM_VAL = 6


def token_logps(model, prompt_ids, response_ids) -> list[float]:
    """log p(response token | prefix) for each response token, one unpadded row, full log-softmax."""
    ids = torch.tensor([list(prompt_ids) + list(response_ids)])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits[0].double().log_softmax(-1)
    return [logprobs[t - 1, ids[0, t]].item() for t in range(len(prompt_ids), ids.shape[1])]


def validate(model_dir: Path, reference_dir: Path | None, pair_loss, beta: float, cache: Path):
    L.seed_everything(0, verbose=False)
    module = RobustDPO(
        model=str(model_dir),
        reference=None if reference_dir is None else str(reference_dir),
        pair_loss=pair_loss,
        beta=beta,
        torch_dtype="float64",
        reference_cache_dir=str(cache),
    )
    data = AttributeWorldDataModule(
        num_train=8, num_val=NUM_VAL, val_alphas=[1.0], batch_size=NUM_VAL, max_length=24, tokenizer_dir=str(model_dir)
    )
    trainer = quiet_trainer(accelerator="cpu")
    trainer.validate(module, datamodule=data, verbose=False)
    rows = list(data.val_datasets[data.val_names[0]])
    assert len(rows) == NUM_VAL  # one validation batch holds the whole first set
    return module, float(trainer.callback_metrics["val/loss"]), rows


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def test_rpo_validation_loss_is_dpo_plus_the_batch_token_nll(tmp_path, tiny_model_dir, tiny_reference_dir):
    from transformers import AutoModelForCausalLM

    beta, alpha = 0.5, 0.3
    _, loss, rows = validate(tiny_model_dir, tiny_reference_dir, RPOLoss(alpha=alpha), beta, tmp_path)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64).eval()
    reference = AutoModelForCausalLM.from_pretrained(tiny_reference_dir, dtype=torch.float64).eval()
    dpo, chosen_tokens = [], []
    for row in rows:
        ratios = {}
        for side in ("chosen", "rejected"):
            mine = token_logps(policy, row["prompt_ids"], row[f"{side}_ids"])
            theirs = token_logps(reference, row["prompt_ids"], row[f"{side}_ids"])
            ratios[side] = sum(mine) - sum(theirs)
            if side == "chosen":
                chosen_tokens += mine
        dpo.append(-log_sigmoid(beta * (ratios["chosen"] - ratios["rejected"])))
    expected = sum(dpo) / len(dpo) - alpha * sum(chosen_tokens) / len(chosen_tokens)
    assert loss == pytest.approx(expected, rel=1e-9)


def test_simpo_validation_loss_is_the_formula_and_no_reference_is_built(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    beta, gamma = 2.0, 0.3
    module, loss, rows = validate(tiny_model_dir, None, SimPOLoss(gamma=gamma), beta, tmp_path)
    assert module.reference is None and not list(tmp_path.glob("*.pt"))  # nothing computed or cached for a reference
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64).eval()
    losses = []
    for row in rows:
        chosen = token_logps(policy, row["prompt_ids"], row["chosen_ids"])
        rejected = token_logps(policy, row["prompt_ids"], row["rejected_ids"])
        margin = beta * sum(chosen) / len(chosen) - beta * sum(rejected) / len(rejected) - gamma
        losses.append(-log_sigmoid(margin))
    assert loss == pytest.approx(sum(losses) / len(losses), rel=1e-9)


@pytest.mark.parametrize("pair_loss", ["rpo", "simpo"])
def test_trains_under_kldpo_and_wdpo_from_the_cli(tmp_path: Path, pair_loss: str, tensorboard_scalars):
    for strategy in ("kl", "wasserstein"):
        root = tmp_path / strategy
        configs = ["-c", str(CONFIGS / "quickstart.yaml"), "-c", str(CONFIGS / "robust" / f"{strategy}.yaml")]
        configs += ["-c", str(CONFIGS / "losses" / f"{pair_loss}.yaml")]
        args = [*small_run_args(root), "--trainer.max_steps=2", "--data.init_args.num_train=32"]  # one epoch
        cli = main(["fit", *configs, *args, "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0"])
        assert cli.trainer.global_step == 2
        assert type(cli.model.pair_loss).__name__ == {"rpo": "RPOLoss", "simpo": "SimPOLoss"}[pair_loss]
        scalars = tensorboard_scalars(root)
        losses = scalars["train/loss"].values()
        assert losses and all(math.isfinite(v) for v in losses), strategy
        if strategy == "wasserstein":
            assert all(v > 0 for v in scalars["train/robust/penalty"].values())
