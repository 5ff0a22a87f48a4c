"""Numerical guards through the real Trainer: a NaN loss or gradient stops the fit with a checkpoint of the last
good state, or skips exactly that optimizer step; weights with a NaN are never written to a checkpoint."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from rdpo_lightning.cli import main
from rdpo_lightning.data import AttributeWorldDataModule
from rdpo_lightning.robust import KLReweighter, NoRobust, WassersteinPenalty
from rdpo_lightning.training.guards import NonFiniteError, NonFiniteGuard, refuse_nonfinite_checkpoint
from rdpo_lightning.training.module import RobustDPO
from rdpo_lightning.training.quiet import quiet_trainer

TESTS = Path(__file__).resolve().parents[1]
TINY = {"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 16, "n_positions": 64}
STRATEGIES = {
    "none": NoRobust,
    "kl": lambda: KLReweighter(tau=0.5),
    "wdpo_finite_difference": lambda: WassersteinPenalty(rho=0.5),
    "wdpo_exact": lambda: WassersteinPenalty(rho=0.5, mode="exact"),
}


@pytest.fixture()
def components(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    import fit_components

    return fit_components


class Snapshots(L.Callback):
    """The policy's flattened weights after every training batch, and a hook to poison one weight."""

    def __init__(self, poison_at: int | None = None) -> None:
        self.after: list[torch.Tensor] = []
        self.initial: torch.Tensor | None = None
        self.poison_at = poison_at

    def on_train_start(self, trainer, pl_module):
        self.initial = flat_policy(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.poison_at:
            with torch.no_grad():
                next(pl_module.policy.parameters()).view(-1)[0] = float("nan")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.names = [name for name, _ in pl_module.policy.named_parameters()]
        self.after.append(flat_policy(pl_module))


def flat_policy(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.policy.parameters()])


def fit(
    tmp_path,
    tokenizer_dir,
    robust,
    pair_loss=None,
    on_nonfinite="stop",
    callbacks=(),
    checkpoints=False,
    steps=4,
    **model,
):
    torch.manual_seed(0)
    module = RobustDPO(model_config=dict(TINY), robust=robust, pair_loss=pair_loss, on_nonfinite=on_nonfinite, **model)
    data = AttributeWorldDataModule(
        num_train=32, num_val=8, batch_size=8, val_alphas=[0.0], tokenizer_dir=str(tokenizer_dir), max_length=32
    )
    trainer = quiet_trainer(
        accelerator="cpu",
        max_steps=steps,
        enable_checkpointing=checkpoints,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
    )
    if pair_loss is not None:
        pair_loss.trainer = trainer
    trainer.fit(module, datamodule=data)
    return trainer, module


@pytest.mark.parametrize("strategy", ["none", "wdpo_finite_difference"])
def test_stop_writes_the_last_good_state_and_names_it(tmp_path, world_tokenizer_dir, components, strategy):
    snapshots = Snapshots()
    with pytest.raises(NonFiniteError, match=r"non-finite loss and gradient at step 2; stopping") as caught:
        fit(tmp_path, world_tokenizer_dir, STRATEGIES[strategy](), components.NaNLossAtSteps([2]), "stop", [snapshots])
    path = tmp_path / "last-good-step=2.ckpt"
    assert str(path) in str(caught.value)
    saved = torch.load(path, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 2
    policy = torch.cat([saved["state_dict"][f"policy.{name}"].flatten() for name in snapshots.names])
    assert len(snapshots.after) == 2 and torch.equal(policy, snapshots.after[-1])  # the weights after step 2
    assert torch.isfinite(policy).all()


@pytest.mark.parametrize(
    "strategy, gradient_only",
    [("none", False), ("kl", True), ("wdpo_finite_difference", True), ("wdpo_exact", True)],
)  # fmt: skip
def test_skip_drops_exactly_that_step(tmp_path, world_tokenizer_dir, components, strategy, gradient_only):
    snapshots = Snapshots()
    # exact WDPO differentiates the gradient inside its loss, so a NaN gradient makes its loss NaN too
    what = "(loss and )?gradient" if gradient_only else "loss and gradient"
    with pytest.warns(UserWarning, match=f"non-finite {what} at step 1: optimizer step skipped"):
        trainer, module = fit(
            tmp_path, world_tokenizer_dir, STRATEGIES[strategy](),
            components.NaNLossAtSteps([1], gradient_only=gradient_only), "skip", [snapshots],
        )  # fmt: skip
    assert trainer.global_step == 4 and module.nonfinite.skipped_steps == 1
    before, skipped, after = snapshots.after[0], snapshots.after[1], snapshots.after[2]
    assert torch.equal(skipped, before) and not torch.equal(after, skipped)
    assert all(torch.isfinite(s).all() for s in snapshots.after)
    adam_steps = {int(state["step"]) for state in trainer.optimizers[0].state.values()}
    assert adam_steps == {3}  # the optimizer's moments never saw the skipped step


class StepCosts(L.Callback):
    """Counts, inside the module's ``on_before_optimizer_step`` (norm, clipping and guard), the elementwise finiteness
    checks launched and the values read by the host."""

    def __init__(self, monkeypatch) -> None:
        self.monkeypatch = monkeypatch
        self.calls: list[dict[str, int]] = []

    def on_fit_start(self, trainer, pl_module):
        hook = pl_module.on_before_optimizer_step

        def counted(optimizer):
            counts = {"isfinite": 0, "host_reads": 0}
            with self.monkeypatch.context() as patch:
                isfinite = torch.isfinite
                patch.setattr(
                    torch,
                    "isfinite",
                    lambda t: (counts.__setitem__("isfinite", counts["isfinite"] + 1), isfinite(t))[1],
                )
                for name in ("item", "tolist", "__bool__"):
                    original = getattr(torch.Tensor, name)

                    def read(tensor, *args, _original=original, **kwargs):
                        counts["host_reads"] += 1
                        return _original(tensor, *args, **kwargs)

                    patch.setattr(torch.Tensor, name, read)
                hook(optimizer)
            self.calls.append(counts)

        pl_module.on_before_optimizer_step = counted


@pytest.mark.parametrize("clip", [1.0, None])
def test_the_verdict_is_one_check_of_the_norm_read_once(tmp_path, world_tokenizer_dir, clip, monkeypatch):
    """The guard's gradient verdict comes from the global norm clipping computes (also when clipping is off): one
    finiteness check per step, not one per gradient, and one host read of the step's flags."""
    costs = StepCosts(monkeypatch)
    trainer, module = fit(
        tmp_path, world_tokenizer_dir, NoRobust(), None, "stop", [costs], steps=2, gradient_clip_val=clip
    )
    assert len(list(module.policy.parameters())) > 10
    assert costs.calls == [{"isfinite": 1, "host_reads": 1}] * 2


def test_unclipped_runs_skip_a_non_finite_gradient(tmp_path, world_tokenizer_dir, components):
    """``gradient_clip_val: null`` measures the norm anyway: a NaN gradient (finite loss) is still caught."""
    snapshots = Snapshots()
    with pytest.warns(UserWarning, match="non-finite gradient at step 1: optimizer step skipped"):
        trainer, module = fit(
            tmp_path, world_tokenizer_dir, NoRobust(), components.NaNLossAtSteps([1], gradient_only=True), "skip",
            [snapshots], gradient_clip_val=None,
        )  # fmt: skip
    assert module.nonfinite.skipped_steps == 1 and torch.equal(snapshots.after[1], snapshots.after[0])
    assert all(torch.isfinite(s).all() for s in snapshots.after)


def test_an_overflowing_wasserstein_penalty_skips_the_step(tmp_path, world_tokenizer_dir, components):
    """Exact WDPO on a loss scaled by 1e30: ‖∇_z ℓ‖² overflows float32, the loss is inf, the step is skipped."""

    class Huge(components.SigmoidLoss):
        def forward(self, chosen_logratios, rejected_logratios, beta):
            return 1e30 * super().forward(chosen_logratios, rejected_logratios, beta)

    snapshots = Snapshots()
    with pytest.warns(UserWarning, match="non-finite loss and gradient at step 0: optimizer step skipped"):
        trainer, module = fit(
            tmp_path, world_tokenizer_dir, STRATEGIES["wdpo_exact"](), Huge(), "skip", [snapshots], steps=2
        )
    assert module.nonfinite.skipped_steps == 2
    assert all(torch.equal(s, snapshots.initial) for s in snapshots.after)  # nothing was applied, nothing became NaN


def test_non_finite_weights_are_never_checkpointed(tmp_path, world_tokenizer_dir):
    """A weight turns NaN before step 2: under ``stop`` no last-good file can be written; under ``skip`` the run's
    own ModelCheckpoint refuses to save — in both cases no file holds NaN weights."""
    with pytest.raises(NonFiniteError, match="No checkpoint written: the weights are already non-finite"):
        fit(tmp_path / "stop", world_tokenizer_dir, NoRobust(), None, "stop", [Snapshots(poison_at=2)])
    assert not list((tmp_path / "stop").rglob("*.ckpt"))

    with pytest.raises(NonFiniteError, match="refusing to write a checkpoint with non-finite weights in policy"):
        fit(tmp_path / "skip", world_tokenizer_dir, NoRobust(), None, "skip", [Snapshots(poison_at=2)], True)
    for path in (tmp_path / "skip").rglob("*.ckpt"):
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_refusal_names_the_offending_tensors():
    state = {f"w{i}": torch.tensor([1.0, float("inf") if i % 2 else 0.0]) for i in range(14)}
    state["ids"] = torch.tensor([1, 2])
    with pytest.raises(NonFiniteError, match=r"in w1, w3, w5, w7, w9 and 2 more"):
        refuse_nonfinite_checkpoint({"state_dict": state})
    refuse_nonfinite_checkpoint({"state_dict": {"w": torch.ones(3)}})
    with pytest.raises(ValueError, match="model.on_nonfinite must be one of 'stop', 'skip'; got 'ignore'"):
        NonFiniteGuard("ignore")


def test_cli_reports_a_diverged_run_in_one_line(tmp_path, components, capsys):
    configs = TESTS.parent / "configs"
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "-c",
                str(configs / "quickstart.yaml"),
                f"--trainer.default_root_dir={tmp_path}",
                "--trainer.logger=false",
                "--trainer.max_steps=3",
                "--trainer.enable_progress_bar=false",
                "--trainer.num_sanity_val_steps=0",
                "--trainer.callbacks+=fit_components.AttachTrainer",
                "--data.init_args.num_train=32",
                "--data.init_args.num_val=8",
                "--data.init_args.batch_size=8",
                "--data.init_args.val_alphas=[0.0]",
                "--model.model_config.n_layer=1",
                "--model.model_config.n_embd=16",
                "--model.pair_loss=fit_components.NaNLossAtSteps",
                "--model.pair_loss.init_args.steps=[1]",
            ]
        )
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("rdpo: error:")]
    assert len(lines) == 1 and "non-finite loss and gradient at step 1; stopping (model.on_nonfinite=stop)" in lines[0]
    assert "last-good-step=1.ckpt" in lines[0]
    assert "Traceback" not in err
