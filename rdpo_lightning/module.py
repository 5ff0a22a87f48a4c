"""The LightningModule: a policy, a frozen reference, a pair loss and a robust strategy.

The module computes per-pair losses from one concatenated (2B, T) forward and hands them to its
:class:`~rdpo_lightning.robust.RobustLoss`; it never asks which robust method it runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor

from rdpo_lightning.data.sampler import load_pending_loader_states
from rdpo_lightning.guards import POLICIES as NONFINITE_POLICIES
from rdpo_lightning.guards import NonFiniteGuard, refuse_nonfinite_checkpoint
from rdpo_lightning.logprobs import sequence_logprobs
from rdpo_lightning.losses import PairLoss, SigmoidLoss
from rdpo_lightning.models import disable_dropout, frozen_copy, load_causal_lm, resolve_dtype
from rdpo_lightning.reproducibility import seed_training_batch
from rdpo_lightning.robust import NoRobust, PairBatch, RobustLoss
from rdpo_lightning.robust.base import check_choice, check_non_negative, check_positive


@dataclass
class PairLogps:
    """Sequence log-probs of the chosen and rejected responses, each (B,)."""

    chosen: Tensor
    rejected: Tensor


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class RobustDPO(L.LightningModule):
    """Preference optimisation with a swappable robust strategy.

    Args:
        model: Hugging Face name or local path of the policy (``AutoModelForCausalLM``).
        model_config: instead of ``model``, a config dict (with ``model_type``) for a randomly initialised policy.
        reference: name or path of the reference policy; default: a frozen copy of the initial policy.
        beta: the KL-regularisation strength β of DPO (> 0).
        pair_loss: per-pair loss (default :class:`SigmoidLoss`, i.e. DPO).
        robust: the robust strategy (default :class:`NoRobust`, i.e. ordinary DPO).
        optimizer: optimizer factory (``class_path`` in YAML).
        warmup_steps, min_lr_ratio: linear warm-up, then cosine decay to ``min_lr_ratio`` × lr.
        gradient_clip_val: gradient-norm clip, applied in automatic and manual optimisation alike.
        disable_policy_dropout: zero dropout in the policy (the reference never has dropout).
        logprob_chunk_rows: rows per float32 log-prob chunk (bounds memory; None: all rows at once).
        torch_dtype, attn_implementation: passed to ``from_pretrained`` / ``from_config``.
        on_nonfinite: a NaN/inf loss or gradient ``stop``s the fit with a checkpoint of the last good state, or the
            step is ``skip``ped with a warning (see :mod:`rdpo_lightning.guards`).
    """

    def __init__(
        self,
        model: str | None = None,
        model_config: dict[str, Any] | None = None,
        reference: str | None = None,
        beta: float = 0.1,
        pair_loss: PairLoss | None = None,
        robust: RobustLoss | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.1,
        gradient_clip_val: float | None = 1.0,
        disable_policy_dropout: bool = True,
        logprob_chunk_rows: int | None = None,
        torch_dtype: str | None = None,
        attn_implementation: str | None = None,
        on_nonfinite: str = "stop",
    ) -> None:
        super().__init__()
        if (model is None) == (model_config is None):
            raise ValueError("give exactly one of model.model (a name or path) and model.model_config")
        if model_config is not None and "model_type" not in model_config:
            raise ValueError("model.model_config needs a 'model_type' key (e.g. gpt2, llama)")
        check_positive("model.beta", beta)
        check_non_negative("model.warmup_steps", warmup_steps)
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"model.min_lr_ratio must lie in [0, 1], got {min_lr_ratio}")
        if gradient_clip_val is not None:
            check_positive("model.gradient_clip_val", gradient_clip_val)
        if logprob_chunk_rows is not None and not (isinstance(logprob_chunk_rows, int) and logprob_chunk_rows >= 1):
            raise ValueError(f"model.logprob_chunk_rows must be an integer >= 1 or null, got {logprob_chunk_rows!r}")
        resolve_dtype(torch_dtype)
        check_choice("model.on_nonfinite", on_nonfinite, NONFINITE_POLICIES)
        self.nonfinite = NonFiniteGuard(on_nonfinite)
        self.save_hyperparameters(ignore=["pair_loss", "robust", "optimizer"])
        self.model_name = model
        self.model_config = model_config
        self.reference_name = reference
        self.beta = float(beta)
        self.pair_loss = pair_loss if pair_loss is not None else SigmoidLoss()
        self.robust = robust if robust is not None else NoRobust()
        self.optimizer_factory = optimizer
        self.warmup_steps = int(warmup_steps)
        self.min_lr_ratio = float(min_lr_ratio)
        self.gradient_clip_val = gradient_clip_val
        self.disable_policy_dropout = disable_policy_dropout
        self.logprob_chunk_rows = logprob_chunk_rows
        self.torch_dtype = torch_dtype
        self.attn_implementation = attn_implementation
        self.automatic_optimization = self.robust.automatic_optimization
        self.policy: torch.nn.Module | None = None
        self.reference: torch.nn.Module | None = None

    # --- models ------------------------------------------------------------------------------------------------
    def _tokenizer(self) -> Any:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return getattr(datamodule, "tokenizer", None)

    def configure_model(self) -> None:
        """Build the policy and reference lazily, once the DataModule's tokenizer exists (and inside FSDP)."""
        if self.policy is not None:
            return
        policy = load_causal_lm(
            self.model_name, self.model_config, self._tokenizer(), self.torch_dtype, self.attn_implementation
        )
        if self.disable_policy_dropout:
            disable_dropout(policy)
        if self.reference_name is None:
            reference = frozen_copy(policy)
        else:
            reference = frozen_copy(load_causal_lm(self.reference_name, None, None, self.torch_dtype))
        self.policy, self.reference = policy, reference

    def train(self, mode: bool = True) -> RobustDPO:
        """Keep the reference in eval mode whatever Lightning toggles."""
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        return self

    # --- forward -----------------------------------------------------------------------------------------------
    def _logps(self, model: torch.nn.Module, batch: dict[str, Tensor]) -> PairLogps:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        logps = sequence_logprobs(
            logits, batch["labels"], average=self.pair_loss.length_normalized, chunk_rows=self.logprob_chunk_rows
        )
        half = logps.shape[0] // 2
        return PairLogps(logps[:half], logps[half:])

    @torch.no_grad()
    def reference_logps(self, batch: dict[str, Tensor]) -> PairLogps:
        if "reference_chosen_logps" in batch:
            return PairLogps(batch["reference_chosen_logps"], batch["reference_rejected_logps"])
        return self._logps(self.reference, batch)

    def policy_forward(
        self, batch: dict[str, Tensor], reference: PairLogps, capture: bool = False, shift: Tensor | None = None
    ) -> tuple[PairBatch, PairLogps]:
        """Per-pair losses of the policy; with ``capture`` the input-embedding output z is kept (and ``shift``
        added to it) through a forward hook, which works under FSDP where calling the embedding directly does not."""
        captured: list[Tensor] = []

        def hook(_module, _inputs, output):
            if shift is not None:
                output = output + shift.to(output.dtype)
            if capture:
                if not output.requires_grad:
                    output = output.detach().requires_grad_()
                captured.append(output)
            return output

        hooked = capture or shift is not None
        handle = self.policy.get_input_embeddings().register_forward_hook(hook) if hooked else None
        try:
            with self.robust.forward_context():
                policy = self._logps(self.policy, batch)
        finally:
            if handle is not None:
                handle.remove()
        losses = self.pair_loss(policy.chosen - reference.chosen, policy.rejected - reference.rejected, self.beta)
        pairs = PairBatch(
            losses=losses,
            embeddings=captured[0] if captured else None,
            groups=batch.get("groups"),
            gather=self._gather,
            world_size=self.trainer.world_size if self._trainer is not None else 1,
        )
        return pairs, policy

    def _gather(self, tensor: Tensor) -> Tensor:
        tensor = tensor.detach()
        if self._trainer is None or self.trainer.world_size == 1:
            return tensor
        return self.all_gather(tensor).reshape(-1)

    # --- steps -------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        reference = self.reference_logps(batch)
        capture = self.robust.needs_embeddings
        if self.automatic_optimization:
            pairs, policy = self.policy_forward(batch, reference, capture=capture)
            result = self.robust(pairs)
            loss = result.loss
            self.nonfinite.observe_loss(loss)
        else:
            policies: list[PairLogps] = []

            def forward(shift: Tensor | None) -> PairBatch:
                pairs, policy = self.policy_forward(batch, reference, capture=shift is None, shift=shift)
                policies.append(policy)
                return pairs

            optimizer = self.optimizers()
            optimizer.zero_grad()
            pairs, result = self.robust.manual_step(forward, self.manual_backward)
            self.nonfinite.observe_loss(result.loss)
            policy = policies[0]
            if self.gradient_clip_val is not None:
                self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")
            optimizer.step()
            scheduler = self.lr_schedulers()
            if scheduler is not None:
                scheduler.step()
            loss = None
        self._log_pairs("train", pairs.losses, policy, reference, prefixes=["train"])
        self.log("train/loss", result.loss.detach(), batch_size=pairs.losses.shape[0], sync_dist=True, prog_bar=True)
        for name, value in result.metrics.items():
            self.log(f"train/robust/{name}", value, batch_size=pairs.losses.shape[0], sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """Logs the TRL metric set of the in-distribution set (dataloader 0) under ``val/``, and returns the
        per-pair losses and implicit rewards of every set, from which
        :class:`~rdpo_lightning.callbacks.WorstCaseEvaluation` accumulates exact per-mixture metrics."""
        reference = self.reference_logps(batch)
        pairs, policy = self.policy_forward(batch, reference)
        if dataloader_idx == 0:
            self._log_pairs("val", pairs.losses, policy, reference, ["val"])
        return {
            "losses": pairs.losses.detach(),
            "chosen_rewards": self.beta * (policy.chosen - reference.chosen).detach(),
            "rejected_rewards": self.beta * (policy.rejected - reference.rejected).detach(),
        }

    def test_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        reference = self.reference_logps(batch)
        pairs, policy = self.policy_forward(batch, reference)
        self._log_pairs("test", pairs.losses, policy, reference, [f"test/{self._val_name(dataloader_idx)}"])

    def _val_name(self, index: int) -> str:
        names = getattr(getattr(self._trainer, "datamodule", None), "val_names", None) or []
        return names[index] if index < len(names) else str(index)

    def _log_pairs(
        self, stage: str, losses: Tensor, policy: PairLogps, reference: PairLogps, prefixes: list[str]
    ) -> None:
        """The TRL-style metric set under each prefix (``train``, ``val``, ``val/<mixture>``)."""
        chosen_rewards = self.beta * (policy.chosen - reference.chosen).detach()
        rejected_rewards = self.beta * (policy.rejected - reference.rejected).detach()
        values = {
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
            "logps/chosen": policy.chosen.detach().mean(),
            "logps/rejected": policy.rejected.detach().mean(),
        }
        if stage != "train":
            values["loss"] = losses.detach().mean()
        else:
            values["pair_loss"] = losses.detach().mean()
        on_step = stage == "train"
        for prefix in prefixes:
            for name, value in values.items():
                self.log(
                    f"{prefix}/{name}",
                    value,
                    batch_size=losses.shape[0],
                    on_step=on_step,
                    on_epoch=not on_step,
                    sync_dist=True,
                    add_dataloader_idx=False,
                    prog_bar=prefix == "val" and name in ("loss", "rewards/accuracies"),
                )

    # --- reliability: reproducible randomness, numerical guards, finite checkpoints -----------------------------
    def on_train_start(self) -> None:
        load_pending_loader_states(self.trainer)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        seed_training_batch(self.trainer, batch_idx)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.nonfinite.before_optimizer_step(self, optimizer)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        refuse_nonfinite_checkpoint(checkpoint)

    # --- optimisation ------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = warmup_cosine(self.warmup_steps, total, self.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm=None
    ) -> None:
        value = gradient_clip_val if gradient_clip_val is not None else self.gradient_clip_val
        if value is not None:
            self.clip_gradients(optimizer, gradient_clip_val=value, gradient_clip_algorithm=gradient_clip_algorithm)
