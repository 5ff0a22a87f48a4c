"""``rdpo fit -c configs/quickstart.yaml -c configs/online/<x>.yaml``: the shipped online configs through the real CLI,
stacked on the quickstart as the docs say, at a tiny size; a user's own scorer named in YAML; bad input in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from rdpo_lightning.cli import main
from tests.cli.test_cli import run_args

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMALL = [
    "--trainer.max_steps=3",
    "--trainer.val_check_interval=3",
    "--data.init_args.num_train=24",
    "--data.init_args.num_val=8",
    "--data.init_args.batch_size=4",
    "--data.init_args.generation.completions=3",
    "--data.init_args.generation.max_new_tokens=4",
    "--model.model_config.n_layer=1",
    "--model.model_config.n_embd=32",
]


@pytest.mark.parametrize("name", ["dpo", "mixture_dro"])
def test_an_online_config_stacked_on_the_quickstart_trains_and_logs_its_rounds(name, tmp_path, tensorboard_scalars):
    cli = main(["fit", "-c", str(CONFIGS / "quickstart.yaml"), "-c", str(CONFIGS / "online" / f"{name}.yaml"),
                *run_args(tmp_path), *SMALL])  # fmt: skip
    assert type(cli.datamodule).__name__ == "OnlineWorldDataModule"
    assert cli.datamodule.train_mixture.name == "alpha=0.10"  # the quickstart's alpha_0, carried over
    assert cli.trainer.global_step == 3
    scalars = tensorboard_scalars(tmp_path)
    assert sorted(scalars["online/pairs"].values()) == [4.0, 4.0, 4.0]
    assert set(scalars["online/round"].values()) == {0.0, 1.0, 2.0}
    rewards = [scalars[f"online/reward/alpha={a}"] for a in ("0.00", "0.25", "0.50", "0.75", "1.00", "0.10")]
    for step, worst in scalars["online/reward/worst_case"].items():
        assert worst == pytest.approx(min(r[step] for r in rewards), rel=1e-6)
    assert "val/worst_case/loss" in scalars


def test_a_users_callable_scorer_named_in_yaml_scores_the_completions(tmp_path, user_module, tensorboard_scalars):
    name = user_module(
        "my_scores",
        """
        import numpy as np

        def lengths(texts):
            # five columns, one per attribute of the world: the length of each completion in words, then zeros
            n = np.array([len(t.split()) for t in texts], dtype=float)
            return np.stack([n, np.zeros_like(n), np.zeros_like(n), n, -n], axis=1)
        """,
    )
    scorer = (
        "--data.init_args.scorer={class_path: rdpo_lightning.rewards.CallableReward, init_args: {function:"
        f" {name}:lengths, attributes: [sadness, joy, love, anger, fear]}}}}"
    )
    cli = main(["fit", "-c", str(CONFIGS / "quickstart.yaml"), "-c", str(CONFIGS / "online" / "dpo.yaml"),
                *run_args(tmp_path), *SMALL, scorer])  # fmt: skip
    assert type(cli.datamodule.scorer).__name__ == "CallableReward"
    scalars = tensorboard_scalars(tmp_path)
    # alpha=0.10 weighs anger (the length) 0.1 and fear (minus the length) 0.9: the mean reward is -0.8 x length
    for step, length in scalars["online/attributes/anger"].items():
        assert scalars["online/reward/alpha=0.10"][step] == pytest.approx(
            -0.8 * length, rel=1e-6
        )  # TensorBoard keeps float32
        assert scalars["online/attributes/fear"][step] == pytest.approx(-length, rel=1e-6)


def test_a_scorer_of_the_wrong_width_stops_with_one_line(tmp_path, user_module, capsys):
    name = user_module("two_scores", "def two(texts):\n    return [[0.0, 1.0] for _ in texts]\n")
    scorer = (
        "--data.init_args.scorer={class_path: rdpo_lightning.rewards.CallableReward, init_args: {function:"
        f" {name}:two, attributes: [sadness, joy, love, anger, fear]}}}}"
    )
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "-c", str(CONFIGS / "quickstart.yaml"), "-c", str(CONFIGS / "online" / "dpo.yaml"),
              *run_args(tmp_path), *SMALL, scorer])  # fmt: skip
    assert stopped.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rdpo: error:")]
    assert len(lines) == 1 and "CallableReward" in lines[0] and "shape" in lines[0], lines


@pytest.mark.parametrize(
    "override, message",
    [
        ("--data.init_args.generation.temperature=0", "data.generation.temperature must be > 0, got 0"),
        ("--data.init_args.generation.completions=1", "data.generation.completions must be an integer >= 2"),
        (
            "--data.init_args.generation.max_new_tokens=62",
            "data.generation.max_new_tokens=62 after the longest prompt (4 tokens) runs past the model's context"
            " (model.model_config's n_positions=64)",
        ),
    ],
)
def test_a_bad_generation_setting_is_one_line_naming_its_key(override, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "-c", str(CONFIGS / "quickstart.yaml"), "-c", str(CONFIGS / "online" / "dpo.yaml"),
              *run_args(tmp_path), *SMALL, override])  # fmt: skip
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("rdpo: error:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err[-2000:]
