"""GroupDRO: multiplicative weights toward the worst group, gradients against a direct computation, absent groups,
and group weights saved in a Lightning checkpoint and restored on resume."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch

from rdpo_lightning.data import AttributeWorldDataModule
from rdpo_lightning.errors import InputError
from rdpo_lightning.robust import GroupDRO, ScoredPairs
from rdpo_lightning.training.module import RobustDPO
from rdpo_lightning.training.quiet import quiet_trainer


def reference_step(weights: list[float], losses: torch.Tensor, groups: list[int], eta: float):
    """A plain loop: w_g ← w_g·exp(η·mean ℓ_g) for present g, renormalise; objective Σ w_g ℓ_g / Σ w_g (present g)."""
    means = {}
    for g in range(len(weights)):
        members = [i for i, gi in enumerate(groups) if gi == g]
        if members:
            means[g] = sum(losses[i] for i in members) / len(members)
    new = [w * math.exp(eta * float(means[g])) if g in means else w for g, w in enumerate(weights)]
    total = sum(new)
    new = [w / total for w in new]
    present_mass = sum(new[g] for g in means)
    objective = sum(new[g] * means[g] for g in means) / present_mass
    return new, objective


def test_weights_move_toward_the_worst_group():
    eta, steps = 0.5, 6
    group_loss = [0.2, 1.0, 0.5]
    strategy = GroupDRO(num_groups=3, eta=eta)
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    losses = torch.tensor([group_loss[g] for g in groups.tolist()], dtype=torch.float64)
    history = []
    for _ in range(steps):
        strategy(ScoredPairs(losses=losses, columns={"group": groups}))
        history.append(strategy.group_weights.tolist())
    worst = [h[1] for h in history]
    assert all(b > a for a, b in zip(worst, worst[1:], strict=False))  # the worst group gains every step
    closed_form = np.exp(eta * steps * np.array(group_loss))
    np.testing.assert_allclose(history[-1], closed_form / closed_form.sum(), rtol=1e-12)


def test_objective_and_gradient_match_a_direct_computation():
    eta = 0.3
    x = torch.randn(10, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    groups = [0, 2, 2, 0, 3, 2, 0, 3, 3, 0]  # group 1 is absent
    theta = torch.tensor([0.3, -0.4, 0.2], dtype=torch.float64, requires_grad=True)
    strategy = GroupDRO(num_groups=4, eta=eta)
    strategy.group_weights.copy_(torch.tensor([0.1, 0.4, 0.3, 0.2], dtype=torch.float64))
    out = strategy(
        ScoredPairs(losses=torch.nn.functional.softplus(-(x @ theta)), columns={"group": torch.tensor(groups)})
    )
    out.loss.backward()
    ours = theta.grad.clone()

    theta.grad = None
    losses = torch.nn.functional.softplus(-(x @ theta))
    weights, objective = reference_step([0.1, 0.4, 0.3, 0.2], losses.detach(), groups, eta)
    np.testing.assert_allclose(strategy.group_weights.tolist(), weights, rtol=1e-12)
    means = [losses[[i for i, g in enumerate(groups) if g == k]].mean() for k in (0, 2, 3)]
    mass = weights[0] + weights[2] + weights[3]
    (sum(w * m for w, m in zip([weights[0], weights[2], weights[3]], means, strict=True)) / mass).backward()
    torch.testing.assert_close(ours, theta.grad, rtol=1e-12, atol=1e-15)
    assert out.loss.item() == pytest.approx(float(objective), rel=1e-12)
    assert weights[1] < 0.4  # the absent group keeps its raw weight: it only shrinks by renormalisation
    assert out.metrics["worst_group_loss"].item() == pytest.approx(max(float(m.detach()) for m in means), rel=1e-6)


def test_weights_are_a_float64_buffer_in_the_state_dict():
    strategy = GroupDRO(num_groups=2, eta=1.0)
    strategy(ScoredPairs(losses=torch.tensor([0.1, 2.0]), columns={"group": torch.tensor([0, 1])}))
    state = strategy.state_dict()
    assert "group_weights" in state and state["group_weights"][1] > 0.5
    restored = GroupDRO(num_groups=2)
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.group_weights, strategy.group_weights)
    assert strategy.to(torch.bfloat16).group_weights.dtype == torch.float64  # bf16-true keeps the weights exact


def test_evaluation_does_not_move_the_weights_and_bad_groups_are_errors():
    strategy = GroupDRO(num_groups=2, eta=1.0).eval()
    strategy(ScoredPairs(losses=torch.tensor([0.1, 2.0]), columns={"group": torch.tensor([0, 1])}))
    assert strategy.group_weights.tolist() == [0.5, 0.5]
    with pytest.raises(InputError, match="needs a group id per pair"):
        strategy(ScoredPairs(losses=torch.tensor([0.1, 2.0])))
    with pytest.raises(
        InputError, match=r"group ids must lie in \[0, 2\) for model.robust.init_args.num_groups=2; .* ids \[0, 5\]"
    ):
        strategy(ScoredPairs(losses=torch.tensor([0.1, 2.0]), columns={"group": torch.tensor([0, 5])}))
    with pytest.raises(ValueError, match="num_groups"):
        GroupDRO(num_groups=0)


class RecordWeights(L.Callback):
    def __init__(self) -> None:
        self.at_start: list[float] | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.at_start = pl_module.robust.group_weights.tolist()


def test_group_weights_survive_a_checkpoint_and_resume(tmp_path, tiny_gpt2_config):
    def fit(max_steps: int, ckpt_path=None) -> tuple[RobustDPO, RecordWeights]:
        data = AttributeWorldDataModule(
            train_mixtures=[0.0, 1.0], num_train=32, num_val=8, batch_size=8, cache_dir=str(tmp_path / "cache")
        )
        module = RobustDPO(model_config=tiny_gpt2_config, robust=GroupDRO(num_groups=2, eta=2.0))
        record = RecordWeights()
        trainer = quiet_trainer(
            accelerator="cpu",
            max_steps=max_steps,
            limit_val_batches=0,
            default_root_dir=tmp_path,
            callbacks=[record],
        )
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        if ckpt_path is None:
            trainer.save_checkpoint(tmp_path / "groups.ckpt")
        return module, record

    first, _ = fit(3)
    saved = first.robust.group_weights.tolist()
    assert saved != [0.5, 0.5]
    _, record = fit(4, ckpt_path=tmp_path / "groups.ckpt")
    assert record.at_start == saved
