"""Test-only components for real fits, importable by ``class_path``: a callback that SIGKILLs its own process, a
strategy whose state lives in a registered buffer, pair losses that turn NaN at a chosen training step, and a
launcher that runs several ``rdpo fit`` invocations, each in its own forked process.

``python tests/fit_components.py SPEC.json`` reads ``[{"name": ..., "argv": [...]}, ...]`` and prints
``{name: exit code}`` as JSON. Torch and Lightning are imported once, in a parent that runs no tensor op (so forking
is safe), and every run is a child process that ``rdpo_lightning.cli.main(argv)`` drives until it is killed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys

import lightning as L
import torch

from rdpo_lightning.losses import SigmoidLoss
from rdpo_lightning.robust import RobustLoss, RobustOutput, ScoredPairs


class KillAtStep(L.Callback):
    """SIGKILL this process at the start of the batch after optimizer step ``step`` (its checkpoint is written):
    no exception, no teardown, no flushing — what a pre-empted node or an OOM kill looks like. ``micro_batches``:
    let that many loader batches of the next step start first (under ``model.accumulate_grad_batches``: killed in
    the middle of an accumulation window)."""

    def __init__(self, step: int, micro_batches: int = 0) -> None:
        self.step = step
        self.micro_batches = micro_batches
        self._started = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            if self._started == self.micro_batches:
                os.kill(os.getpid(), signal.SIGKILL)
            self._started += 1


class RunningBaseline(RobustLoss):
    """A strategy with state (test-only): pairs whose loss exceeds a running mean of past batch losses count double.
    The running mean is a registered buffer, so it is part of the module's state_dict and of every checkpoint."""

    def __init__(self, momentum: float = 0.5) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("running_loss", torch.zeros(()))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def forward(self, batch: ScoredPairs) -> RobustOutput:
        losses = batch.losses
        weights = 1 + (losses.detach() > self.running_loss).to(losses.dtype)
        if self.training:
            with torch.no_grad():
                self.running_loss.mul_(self.momentum).add_((1 - self.momentum) * losses.detach().mean())
                self.updates += 1
        return RobustOutput(loss=(weights * losses).mean(), metrics={"running_loss": self.running_loss.clone()})


class NaNLossAtSteps(SigmoidLoss):
    """DPO, except that training calls during optimizer steps ``steps`` return NaN losses (validation is spared).

    ``gradient_only``: the losses stay finite and only their gradient is NaN. The step is read from ``trainer``,
    which :class:`AttachTrainer` (or a test) sets."""

    def __init__(self, steps: list[int], gradient_only: bool = False) -> None:
        super().__init__()
        self.steps = set(steps)
        self.gradient_only = gradient_only
        self.trainer = None

    def forward(self, chosen_logratios, rejected_logratios, beta):
        losses = super().forward(chosen_logratios, rejected_logratios, beta)
        if not self.training or self.trainer is None or self.trainer.global_step not in self.steps:
            return losses
        if self.gradient_only:  # finite loss, NaN gradient
            return losses + _nan_backward(losses)
        return losses * float("nan")


class _NaNBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.zeros_like(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


def _nan_backward(x: torch.Tensor) -> torch.Tensor:
    """Zero in the forward pass, NaN in the backward pass."""
    return _NaNBackward.apply(x)


class AttachTrainer(L.Callback):
    """Lets a test pair loss see the step it runs in."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.pair_loss.trainer = trainer


def _run(argv: list[str]) -> None:
    from rdpo_lightning.cli import main

    main(argv)
    os._exit(0)  # reaching here means the run was *not* interrupted


def run_all(spec: list[dict]) -> dict[str, int | None]:
    context = multiprocessing.get_context("fork")
    codes = {}
    for run in spec:
        process = context.Process(target=_run, args=(run["argv"],))
        process.start()
        process.join(timeout=300)
        codes[run["name"]] = process.exitcode
    return codes


def import_once() -> None:
    """Import what a fit imports lazily, once in the parent, so every forked run starts warm (no tensor op here)."""
    import psutil  # noqa: F401
    import torch.utils.tensorboard  # noqa: F401
    import tqdm.contrib.logging  # noqa: F401
    import transformers.models.gpt2.modeling_gpt2  # noqa: F401
    import transformers.processing_utils  # noqa: F401

    import rdpo_lightning.cli.lightning_cli  # noqa: F401  (rdpo_lightning.cli is light: the Lightning CLI is here)


if __name__ == "__main__":
    import_once()

    with open(sys.argv[1]) as handle:
        print(json.dumps(run_all(json.load(handle))))
