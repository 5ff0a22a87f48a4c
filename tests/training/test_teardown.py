"""The end of a fit copies no training state to the host: the bytes Lightning's teardown hands to its moves, counted
in a tiny real fit under the strategies users name (``auto``, ``ddp``)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import strategy as strategy_module

from rdpo_lightning.data import AttributeWorldDataModule
from rdpo_lightning.robust import NoRobust
from rdpo_lightning.training.module import RobustDPO
from rdpo_lightning.training.quiet import quiet_trainer
from rdpo_lightning.training.teardown import optimizer_state_to

TINY = {"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 16, "n_positions": 64}


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def optimizer_state_bytes(optimizers) -> int:
    """What Lightning's ``_optimizers_to_device`` moves: every state tensor but ``step``."""
    return sum(nbytes(v for k, v in state.items() if k != "step") for o in optimizers for state in o.state.values())


class Moves(L.Callback):
    """From the end of training on (teardown follows ``on_train_end``): the bytes of optimizer state handed to
    ``_optimizers_to_device`` for the CPU, and of gradients and weights the module holds when ``.cpu()`` is called;
    and what the fit held at its end, for scale."""

    def __init__(self, monkeypatch) -> None:
        self.tracking = False
        self.moved = {"optimizer": 0, "gradients": 0, "weights": 0}
        self.held = {}
        to_device = strategy_module._optimizers_to_device

        def counted_to_device(optimizers, device):
            if self.tracking and torch.device(device).type == "cpu":
                self.moved["optimizer"] += optimizer_state_bytes(optimizers)
            return to_device(optimizers, device)

        cpu = RobustDPO.cpu

        def counted_cpu(module):
            if self.tracking:
                self.moved["gradients"] += nbytes(p.grad for p in module.parameters())
                self.moved["weights"] += nbytes(module.policy.parameters())
            return cpu(module)

        monkeypatch.setattr(strategy_module, "_optimizers_to_device", counted_to_device)
        monkeypatch.setattr(RobustDPO, "cpu", counted_cpu)

    def on_train_end(self, trainer, pl_module):
        self.held = {
            "optimizer": optimizer_state_bytes(trainer.optimizers),
            "gradients": nbytes(p.grad for p in pl_module.parameters()),
            "weights": nbytes(pl_module.policy.parameters()),
        }
        self.tracking = True


@pytest.mark.parametrize("strategy", ["auto", "ddp"])
def test_teardown_moves_no_gradients_and_no_optimizer_state(tmp_path, world_tokenizer_dir, monkeypatch, strategy):
    moves = Moves(monkeypatch)
    torch.manual_seed(0)
    module = RobustDPO(model_config=dict(TINY), robust=NoRobust())
    data = AttributeWorldDataModule(
        num_train=16, num_val=8, batch_size=8, val_alphas=[0.0], tokenizer_dir=str(world_tokenizer_dir), max_length=32
    )
    trainer = quiet_trainer(
        accelerator="cpu", devices=1, strategy=strategy, max_steps=2, limit_val_batches=0, default_root_dir=tmp_path,
        callbacks=[moves],
    )  # fmt: skip
    trainer.fit(module, datamodule=data)

    # the fit ended holding gradients and two AdamW moments a weight; the weights alone went to the host
    weights = moves.held["weights"]
    assert moves.held["gradients"] >= weights > 0 and moves.held["optimizer"] == 2 * weights
    assert moves.moved == {"optimizer": 0, "gradients": 0, "weights": weights}
    assert all(p.grad is None for p in module.parameters())
    assert optimizer_state_bytes(trainer.optimizers) == 2 * weights  # the state stayed, where it was

    optimizer_state_to(trainer, "meta")  # the documented way to move it (meta: visibly elsewhere than the CPU)
    states = [v for s in trainer.optimizers[0].state.values() for k, v in s.items() if k != "step"]
    assert states and all(v.device.type == "meta" for v in states)
