"""Numerical guards: a non-finite loss or gradient never reaches the weights, and NaN weights never reach a file.

One decision per optimizer step, taken in ``on_before_optimizer_step`` — which Lightning calls in automatic *and*
manual optimisation (``optimizer.step()`` in WDPO's finite-difference step goes through the same precision plugin) —
from the losses seen since the last step and the gradients about to be applied. The gradients' verdict is read from
the global gradient norm that clipping computes anyway (:func:`~rdpo_lightning.models.sharding.clip_grad_norm`; it is
measured also when clipping is off): the norm is non-finite exactly when some gradient element is (or when finite
gradients are so large that their norm overflows, which counts as non-finite too). So the check costs no kernel per
gradient, and the step's flags (loss, gradient, and the count of ranks that saw either) are read by the host once,
right before the optimizer needs the answer: ``stop`` must raise before the weights move and ``skip`` must drop the
gradients before the optimizer reads them, which only the host can decide for torch's non-fused optimizers. All ranks
take the same decision (one all-reduce of the flags, on the device, before that read), so DDP/FSDP ranks never
disagree about stepping.

``on_nonfinite="stop"`` (default): write a checkpoint of the last good state (the weights before this step) and stop
with :class:`NonFiniteError`. ``"skip"``: drop this step's gradients (``set_to_none``, so the optimizer leaves the
weights *and* its moments untouched), warn, and go on; the batch and the step number are consumed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from rdpo_lightning.checks import check_choice

POLICIES = ("stop", "skip")


class NonFiniteError(RuntimeError):
    """A non-finite loss/gradient under ``on_nonfinite=stop``, or an attempt to save non-finite weights."""


def _local(tensor: Tensor) -> Tensor:
    """The local shard of a DTensor (FSDP2); the tensor itself otherwise. Ranks combine their verdicts later."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def finite_flag(tensors: Iterable[Tensor | None]) -> Tensor | None:
    """A 0-d bool tensor: every element of every (local) tensor is finite. None when there is nothing to check.

    No host sync: callers combine flags and read them once."""
    flags = [torch.isfinite(_local(t)).all() for t in tensors if t is not None and _local(t).numel()]
    if not flags:
        return None
    return torch.stack([f.to(flags[0].device) for f in flags]).all()


def all_finite(tensors: Iterable[Tensor | None]) -> bool:
    flag = finite_flag(tensors)
    return True if flag is None else bool(flag)


def nonfinite_entries(state_dict: Mapping[str, Any]) -> list[str]:
    """Names of floating-point tensors in ``state_dict`` that hold a NaN or an infinity."""
    return [
        name
        for name, value in state_dict.items()
        if isinstance(value, Tensor) and value.is_floating_point() and not all_finite([value])
    ]


def refuse_nonfinite_checkpoint(checkpoint: dict[str, Any]) -> None:
    """Raise instead of letting a checkpoint with NaN/inf weights be written (called from ``on_save_checkpoint``)."""
    bad = nonfinite_entries(checkpoint.get("state_dict", {}))
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteError(f"refusing to write a checkpoint with non-finite weights in {shown}")


class NonFiniteGuard:
    """What to do when a loss or a gradient is NaN/inf: ``stop`` (checkpoint the last good state) or ``skip``."""

    def __init__(self, policy: str = "stop") -> None:
        check_choice("model.on_nonfinite", policy, POLICIES)
        self.policy = policy
        self.skipped_steps = 0
        self._loss_finite: Tensor | None = None

    def observe_loss(self, loss: Tensor | None) -> None:
        """Remember whether the training loss was finite until the next optimizer step (sticky across accumulation;
        kept on the device, read once per step)."""
        if loss is not None:
            flag = torch.isfinite(loss.detach()).all()
            self._loss_finite = flag if self._loss_finite is None else self._loss_finite & flag

    def before_optimizer_step(self, module: Any, optimizer: torch.optim.Optimizer, gradient_norm: Tensor) -> bool:
        """Decide for this step from the losses seen and the global ``gradient_norm`` (on the device); True when the
        optimizer may apply it. Raises under ``stop``."""
        trainer = module.trainer
        loss_flag, self._loss_finite = self._loss_finite, None
        grad_flag = None
        if not grad_scaler_active(trainer):  # a GradScaler skips overflowing fp16 steps by itself
            grad_flag = torch.isfinite(gradient_norm)
        device = trainer.strategy.root_device
        ok = torch.ones((), dtype=torch.bool, device=device)
        here = torch.stack([(ok if f is None else f.to(device)).logical_not() for f in (loss_flag, grad_flag)])
        ranks = here.any().to(torch.float32).reshape(1)
        if trainer.world_size > 1:  # every rank calls this once per step, whatever it checked
            torch.distributed.all_reduce(ranks)  # a sum, queued on the device (Lightning's reduce adds a barrier)
        loss_bad, grad_bad, ranks_bad = torch.cat([here.to(torch.float32), ranks]).tolist()  # the one host read
        if ranks_bad == 0:
            return True
        bad = [name for name, flag in (("loss", loss_bad), ("gradient", grad_bad)) if flag]
        what = " and ".join(bad) if bad else "loss or gradient on another rank"
        step = trainer.global_step
        if self.policy == "skip":
            optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            rank_zero_warn(
                f"non-finite {what} at step {step}: optimizer step skipped (model.on_nonfinite=skip);"
                f" {self.skipped_steps} step(s) skipped so far"
            )
            module.log("train/skipped_steps", float(self.skipped_steps), rank_zero_only=True)
            return False
        saved = save_last_good(trainer, step)
        raise NonFiniteError(
            f"non-finite {what} at step {step}; stopping (model.on_nonfinite=stop). {saved}"
            " Lower the learning rate, check the data, or set model.on_nonfinite=skip."
        )


def grad_scaler_active(trainer: Any) -> bool:
    """Whether ``16-mixed``'s GradScaler scales the loss (it then skips overflowing steps itself)."""
    return getattr(getattr(trainer, "precision_plugin", None), "scaler", None) is not None


def save_last_good(trainer: Any, step: int) -> str:
    """Checkpoint the current (not yet updated) weights next to the run's other checkpoints; say where, or why not."""
    callback = getattr(trainer, "checkpoint_callback", None)
    directory = Path(getattr(callback, "dirpath", None) or trainer.default_root_dir)
    path = directory / f"last-good-step={step}.ckpt"
    try:
        trainer.save_checkpoint(path)
    except NonFiniteError as error:
        return f"No checkpoint written: the weights are already non-finite ({error})."
    return f"The last good state (before this step) is saved in {path}."
