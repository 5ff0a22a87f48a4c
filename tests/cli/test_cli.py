"""`rdpo fit` / `rdpo validate` through the real LightningCLI, with every robust config, writing TensorBoard events."""

from __future__ import annotations

from pathlib import Path

import pytest

from rdpo_lightning.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PAIR_TAGS = [
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
]
STRATEGY_TAGS = {
    "none": [],
    "kl": ["train/robust/weight_max", "train/robust/ess_fraction"],
    "wasserstein": ["train/robust/penalty"],
}


def small_run_args(root: Path) -> list[str]:
    return [
        f"--trainer.default_root_dir={root}",
        f"--trainer.logger.init_args.save_dir={root}",
        "--trainer.max_epochs=1",
        "--trainer.log_every_n_steps=1",
        "--trainer.val_check_interval=1.0",
        "--trainer.enable_progress_bar=false",
        "--data.init_args.num_train=48",
        "--data.init_args.num_val=16",
        "--data.init_args.batch_size=16",
        "--data.init_args.val_alphas=[0.0,1.0]",
        "--model.model_config.n_layer=1",
        "--model.model_config.n_embd=32",
    ]


@pytest.mark.parametrize("strategy", ["none", "kl", "wasserstein"])
def test_fit_then_validate(tmp_path: Path, strategy: str, tensorboard_scalars):
    base = ["-c", str(CONFIGS / "quickstart.yaml"), "-c", str(CONFIGS / "robust" / f"{strategy}.yaml")]
    cli = main(["fit", *base, *small_run_args(tmp_path)])
    assert cli.trainer.global_step == 3
    tags = set(tensorboard_scalars(tmp_path))
    expected = {"train/loss", *(f"train/{t}" for t in PAIR_TAGS), *(f"val/{t}" for t in [*PAIR_TAGS, "loss"])}
    expected |= {f"val/alpha=1.00/{t}" for t in ("loss", "accuracy")} | {"val/worst_case/loss"}
    expected |= set(STRATEGY_TAGS[strategy])
    assert expected <= tags, sorted(expected - tags)

    checkpoint = next(tmp_path.rglob("*.ckpt"))
    validated = main(["validate", *base, *small_run_args(tmp_path / "validate"), f"--ckpt_path={checkpoint}"])
    metrics = validated.trainer.callback_metrics
    assert metrics["val/loss"] == pytest.approx(float(cli.trainer.callback_metrics["val/loss"]), rel=1e-5)


def test_pretrained_model_directory_is_loaded_like_a_hub_model(
    tmp_path: Path, tiny_model_dir: Path, world_tokenizer_dir
):
    base = ["-c", str(CONFIGS / "quickstart.yaml")]
    args = [a for a in small_run_args(tmp_path) if not a.startswith("--model.model_config")]
    cli = main(
        [
            "fit",
            *base,
            *args,
            "--model.model_config=null",
            f"--model.model={tiny_model_dir}",
            f"--data.init_args.tokenizer_dir={world_tokenizer_dir}",
        ]
    )
    assert cli.model.policy.config.n_embd == 32
    assert cli.trainer.global_step == 3


def test_unknown_strategy_hyper_parameter_is_a_clear_error(tmp_path: Path, capsys):
    base = ["-c", str(CONFIGS / "quickstart.yaml"), "-c", str(CONFIGS / "robust" / "kl.yaml")]
    with pytest.raises(SystemExit):
        main(["fit", *base, *small_run_args(tmp_path), "--model.robust.init_args.tau=-1"])
    err = capsys.readouterr().err
    assert "rdpo: error: model.robust.tau must be a finite number > 0, got -1.0" in err
    assert "Traceback" not in err
