"""``rdpo fit --ckpt_path``: what the user types wins over the checkpoint's hyper-parameters, and says so.

Each run happens in a fresh temporary directory; the checkpoint's run is moved away first, so the paths it recorded
(its base model, its tokenizer) do not exist. Lightning alone parses the checkpoint's ``model.*`` hyper-parameters
over the command line, and torch restores the checkpoint's learning rate into the optimizer: a moved base, a lower
learning rate or a changed radius were silently replaced. A change the resumed state cannot take (the adapter's
rank, the architecture, the optimizer's class) stops with one ``rdpo: error:`` line naming the key.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from rdpo_lightning.cli import main
from tests.cli.test_cli import run_args

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMALL = [
    "--trainer.max_epochs=1",
    "--trainer.max_steps=2",
    "--trainer.val_check_interval=2",
    "--trainer.limit_val_batches=1",
    "--trainer.enable_model_summary=false",
    "--data.init_args.num_train=32",
    "--data.init_args.num_val=8",
    "--data.init_args.batch_size=8",
    "--data.init_args.val_alphas=[0.0,1.0]",
    "--model.torch_dtype=float64",
    "--model.warmup_steps=0",
]


def resuming(messages: list[str]) -> list[str]:
    """The lines a resume says about values that differ from the checkpoint's."""
    return [message for message in messages if message.startswith("resuming with ")]


def policy_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")}


def moved_run(made: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The run's checkpoint and config.yaml copied to a new directory, and the original removed."""
    run = tmp_path / "moved_run"
    shutil.copytree(made / "tensorboard" / "version_0", run)
    shutil.rmtree(made)
    return run / "checkpoints" / "last.ckpt", run / "config.yaml"


@pytest.fixture(scope="module")
def mixture_run(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-step MixtureDRO fit of the quickstart at radius 0.2 (float64), moved away from where it was written."""
    root = tmp_path_factory.mktemp("mixture_fit")
    main(
        ["fit", "-c", str(CONFIGS / "quickstart.yaml"), "-c", str(CONFIGS / "robust" / "mixture_dro.yaml"),
         *run_args(root / "made"), *SMALL, "--model.robust.init_args.radius=0.2",
         "--model.model_config.n_layer=1", "--model.model_config.n_embd=32"]
    )  # fmt: skip
    return moved_run(root / "made", root)


def resume(checkpoint: Path, config: Path, root: Path, *extra: str):
    return main(
        ["fit", "-c", str(config), f"--ckpt_path={checkpoint}", *run_args(root), "--trainer.max_steps=3", *extra]
    )


def test_a_lower_learning_rate_and_a_changed_radius_are_used_after_the_resume(
    mixture_run, tmp_path, monkeypatch, lightning_messages
):
    """AdamW's step is linear in the learning rate (for the same moments and gradient), so one step resumed at a tenth
    of the learning rate moves every weight a tenth as far as the same step at the checkpoint's."""
    checkpoint, config = mixture_run
    monkeypatch.chdir(tmp_path)
    start = policy_weights(torch.load(checkpoint, weights_only=False)["state_dict"])

    same = resume(checkpoint, config, tmp_path / "same")
    assert resuming(lightning_messages) == []  # the run's own configuration: nothing differs
    lower = resume(checkpoint, config, tmp_path / "lower", "--model.optimizer.init_args.lr=0.0001")
    assert resuming(lightning_messages) == ["resuming with optimizer.lr = 0.0001 (the checkpoint has 0.001)"]
    group = lower.trainer.optimizers[0].param_groups[0]
    assert group["initial_lr"] == 0.0001
    moved = {name: policy_weights(run.model.state_dict()) for name, run in (("same", same), ("lower", lower))}
    steps = 0
    for name, before in start.items():
        full, tenth = moved["same"][name] - before, moved["lower"][name] - before
        if full.abs().max() > 0:
            torch.testing.assert_close(tenth, 0.1 * full, rtol=1e-9, atol=1e-15, msg=name)
            steps += 1
    assert steps > 0

    lightning_messages.clear()
    wider = resume(checkpoint, config, tmp_path / "wider", "--model.robust.init_args.radius=0.6")
    assert resuming(lightning_messages) == ["resuming with model.robust.radius = 0.6 (the checkpoint has 0.2)"]
    assert wider.model.robust.radius == 0.6
    for run, radius in ((same, 0.2), (wider, 0.6)):  # the set used is the interval [0.1 - r, 0.1 + r] cut to [0, 1]
        used = run.model.robust.mixture_set
        alphas = used.weights[:, used.alpha_attribute]
        assert (alphas.min(), alphas.max()) == pytest.approx((0.0, 0.1 + radius))


@pytest.mark.parametrize(
    "change, key",
    [
        (["--model.model_config.n_embd=16"], "model.model_config"),
        (["--model.optimizer=torch.optim.SGD", "--model.optimizer.init_args.lr=0.1"], "optimizer"),
    ],
)
def test_a_change_the_resumed_state_cannot_take_is_one_line(mixture_run, tmp_path, monkeypatch, capsys, change, key):
    checkpoint, config = mixture_run
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        resume(checkpoint, config, tmp_path / "changed", *change)
    assert stopped.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rdpo: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"rdpo: error: {key}"), errors
    assert "Traceback" not in capsys.readouterr().err


def test_a_lora_run_resumes_on_its_moved_base_and_refuses_another_rank(tmp_path, monkeypatch, tiny_model_dir, capsys):
    """The base (and its tokenizer) lives elsewhere on the new machine: the typed paths are used, and said; a rank
    other than the checkpoint's adapters' stops before any weight is loaded."""
    base = tmp_path / "made" / "base"
    shutil.copytree(tiny_model_dir, base)
    monkeypatch.chdir(tmp_path)
    lora = ["-c", str(CONFIGS / "peft" / "lora.yaml"), "--model.model_config=null", "--model.peft.init_args.r=2"]
    main(
        ["fit", "-c", str(CONFIGS / "quickstart.yaml"), *lora, *run_args(tmp_path / "made" / "run"), *SMALL,
         f"--model.model={base}", f"--data.init_args.tokenizer={base}"]
    )  # fmt: skip
    elsewhere = tmp_path / "new_machine" / "base"
    shutil.copytree(base, elsewhere)
    checkpoint, config = moved_run(tmp_path / "made" / "run", tmp_path / "new_machine")
    shutil.rmtree(tmp_path / "made")
    typed = [f"--model.model={elsewhere}", f"--data.init_args.tokenizer={elsewhere}"]

    resumed = resume(checkpoint, config, tmp_path / "resumed", *typed)
    assert resumed.trainer.global_step == 3
    assert resumed.model.model_name == str(elsewhere)

    with pytest.raises(SystemExit) as stopped:
        resume(checkpoint, config, tmp_path / "rank4", *typed, "--model.peft.init_args.r=4")
    assert stopped.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rdpo: error:")]
    assert errors == [
        "rdpo: error: model.peft.r: 4 cannot resume a checkpoint whose adapters were trained with 2 (the adapter"
        " weights would not fit); resume with the checkpoint's value, or start a new fit"
    ]
