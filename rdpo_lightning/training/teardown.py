"""The end of a fit copies no training state to the host.

Lightning's ``Strategy.teardown()`` (single device, DDP, and every strategy that calls ``super().teardown()``) moves
the optimizer state to the CPU (``_optimizers_to_device(self.optimizers, "cpu")``) and then the whole
LightningModule, ``.grad`` tensors included (``lightning_module.cpu()``): 16 bytes a parameter under AdamW in
float32 (weights, gradients, two moments), a host peak of 18.4 GiB after a 1.24 B fit (issue 33) and ~120 GiB for an
8 B model, written after the last step and read by no one.

:func:`keep_training_state_on_device` wraps the strategy's ``teardown`` (an attribute of that strategy object only;
the module installs it in ``setup``, so it works for whichever strategy a user names: ``auto``, ``ddp``, ...):

* the policy's gradients are released first (``zero_grad(set_to_none=True)``): nothing reads them after the last
  optimizer step, and a fit that stops with an error releases them too;
* the strategy's optimizers are hidden from the base ``teardown`` for the duration of the call, so their state stays
  where it is; ``trainer.optimizers`` holds the same optimizers afterwards. A user who wants the state on the host
  after a fit calls :func:`optimizer_state_to` (``optimizer_state_to(trainer, "cpu")``).

The weights themselves still go to the CPU as Lightning documents (4 bytes a float32 parameter): callbacks and users
read the module after ``fit``. Hooks cannot do this: ``on_train_end``/``on_fit_end`` run before/after the move, and
the move itself is inside ``teardown``, which has no hook of its own.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.utilities.optimizer import _optimizers_to_device

#: marks a strategy whose teardown is wrapped already (a strategy object may see several fits)
WRAPPED = "_rdpo_keeps_training_state"


def release_gradients(module: torch.nn.Module | None) -> None:
    """Drop every ``.grad`` of ``module`` (``set_to_none``: the memory is freed, nothing is copied)."""
    if module is not None:
        module.zero_grad(set_to_none=True)


def keep_training_state_on_device(strategy: Any) -> None:
    """Wrap ``strategy.teardown`` so it releases the gradients and leaves the optimizer state where it is."""
    if getattr(strategy, WRAPPED, False):
        return
    original = strategy.teardown

    def teardown() -> None:
        release_gradients(strategy.lightning_module)
        optimizers = strategy.optimizers
        strategy.optimizers = []  # the base teardown moves what this lists to the CPU
        try:
            original()
        finally:
            strategy.optimizers = optimizers

    strategy.teardown = teardown
    setattr(strategy, WRAPPED, True)


def optimizer_state_to(trainer: Any, device: str | torch.device) -> None:
    """Move the optimizers' state to ``device`` (e.g. ``"cpu"`` after a fit, to free the accelerator's memory while
    keeping the trainer): what Lightning's teardown did before :func:`keep_training_state_on_device`."""
    _optimizers_to_device(trainer.optimizers, torch.device(device))
