"""The LightningModule: a policy, a frozen reference, a pair loss and a robust strategy.

The module computes per-pair losses from one concatenated (2B, T) forward and hands them to its
:class:`~rdpo_lightning.robust.RobustLoss`; it never asks which robust method it runs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from peft import PeftConfig
from torch import Tensor

from rdpo_lightning.adapters import (
    attach_adapters,
    is_adapted,
    peft_config_dict,
    reference_mode,
    reference_state,
    trainable_summary,
)
from rdpo_lightning.data.collate import PairCollator
from rdpo_lightning.data.sampler import load_pending_loader_states
from rdpo_lightning.distributed import (
    apply_activation_checkpointing,
    clip_grad_norm,
    is_sharded,
    prepare_models,
    reshard,
)
from rdpo_lightning.errors import InputError
from rdpo_lightning.guards import POLICIES as NONFINITE_POLICIES
from rdpo_lightning.guards import NonFiniteGuard, refuse_nonfinite_checkpoint
from rdpo_lightning.logprobs import DEFAULT_CHUNK_ROWS, sequence_logprobs
from rdpo_lightning.losses import PairLoss, SigmoidLoss
from rdpo_lightning.models import batch_logits, disable_dropout, frozen_copy, load_causal_lm, resolve_dtype
from rdpo_lightning.reference_cache import (
    ReferenceCache,
    ReferenceLogps,
    ReferencePrecomputation,
    compute_reference_logps,
    weights_digest,
)
from rdpo_lightning.reproducibility import seed_training_batch
from rdpo_lightning.robust import NoRobust, PairBatch, RobustLoss
from rdpo_lightning.robust.base import check_choice, check_non_negative, check_positive
from rdpo_lightning.run_record import KEY as RUN_RECORD_KEY
from rdpo_lightning.run_record import run_record


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
        peft: adapters to train instead of the whole policy: a PEFT config by ``class_path`` (``peft.LoraConfig``);
            the reference is then the base model itself, no second copy (see :mod:`rdpo_lightning.adapters`).
        adapter: instead of ``peft``, a saved adapter directory to continue training (the reference is the base model
            with this starting adapter).
        quantization: load the base model quantized, as ``transformers.BitsAndBytesConfig`` arguments (QLoRA:
            ``{load_in_4bit: true, bnb_4bit_quant_type: nf4, bnb_4bit_compute_dtype: bfloat16}``); needs a CUDA GPU
            and ``bitsandbytes`` (``pip install rdpo-lightning[qlora]``).
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
        precompute_reference: compute the reference log-probs of every training and validation pair once before
            fitting (cached on disk, see :mod:`rdpo_lightning.reference_cache`) and keep no reference model during
            training; False: a frozen reference model stays resident (sharded like the policy under FSDP).
        reference_cache_dir: where the cached reference log-probs live (default ``$RDPO_CACHE/reference_logps``).
        activation_checkpointing: recompute each transformer block's activations in backward (non-reentrant).
        accumulate_grad_batches: gradient accumulation for robust strategies that drive their own backward passes
            (manual optimisation: ``WassersteinPenalty`` in ``finite_difference`` mode); the others use
            ``trainer.accumulate_grad_batches``.
    """

    def __init__(
        self,
        model: str | None = None,
        model_config: dict[str, Any] | None = None,
        peft: PeftConfig | None = None,
        adapter: str | None = None,
        quantization: dict[str, Any] | None = None,
        reference: str | None = None,
        beta: float = 0.1,
        pair_loss: PairLoss | None = None,
        robust: RobustLoss | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.1,
        gradient_clip_val: float | None = 1.0,
        disable_policy_dropout: bool = True,
        logprob_chunk_rows: int | None = DEFAULT_CHUNK_ROWS,
        torch_dtype: str | None = None,
        attn_implementation: str | None = None,
        on_nonfinite: str = "stop",
        precompute_reference: bool = True,
        reference_cache_dir: str | None = None,
        activation_checkpointing: bool = False,
        accumulate_grad_batches: int = 1,
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
        if not isinstance(accumulate_grad_batches, int) or accumulate_grad_batches < 1:
            raise ValueError(f"model.accumulate_grad_batches must be an integer >= 1, got {accumulate_grad_batches!r}")
        self.save_hyperparameters(ignore=["pair_loss", "robust", "optimizer", "peft"])
        self.hparams["peft"] = peft_config_dict(peft)  # plain data: a checkpoint loads without unpickling PEFT classes
        self.peft = peft
        self.adapter = adapter
        self.quantization = quantization
        self._adapter_config: dict[str, Any] | None = None
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
        self.precompute_reference = precompute_reference
        self.reference_cache_dir = reference_cache_dir
        self.activation_checkpointing = activation_checkpointing
        self.accumulate_grad_batches = accumulate_grad_batches
        self.automatic_optimization = self.robust.automatic_optimization
        self.policy: torch.nn.Module | None = None
        self.reference: torch.nn.Module | None = None
        self._reference_precomputation: ReferencePrecomputation | None = None
        self._logps_dtype = torch.float32

    # --- models ------------------------------------------------------------------------------------------------
    def _tokenizer(self) -> Any:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return getattr(datamodule, "tokenizer", None)

    def setup(self, stage: str) -> None:
        """Refuse, before any model is built, what the chosen Trainer strategy cannot run."""
        strategy = self.trainer.strategy
        refusal = self.robust.sharding_refusal() if is_sharded(strategy) else None
        if refusal is not None:
            raise ValueError(f"{refusal} (strategy: {type(strategy).__name__})")
        if self.accumulate_grad_batches > 1 and self.automatic_optimization:
            raise ValueError(
                f"model.accumulate_grad_batches={self.accumulate_grad_batches} is for robust strategies with manual"
                f" optimisation (WassersteinPenalty finite_difference); {type(self.robust).__name__} runs under"
                " automatic optimisation: set trainer.accumulate_grad_batches instead"
            )

    def configure_model(self) -> None:
        """Build the policy (and, unless its log-probs are precomputed, the reference) lazily, once the DataModule's
        tokenizer exists; then checkpoint and shard them as the Trainer's strategy wants."""
        if self.policy is not None:
            return
        policy = load_causal_lm(
            self.model_name,
            self.model_config,
            self._tokenizer(),
            self.torch_dtype,
            self.attn_implementation,
            quantization=self.quantization,
        )
        if self.quantization is not None and self.peft is None and self.adapter is None:
            raise InputError("model.quantization: a quantized base cannot train; set model.peft (QLoRA) as well")
        policy = attach_adapters(policy, self.peft, self.adapter)
        if is_adapted(policy):
            self._adapter_config = peft_config_dict(policy.peft_config["default"])
            rank_zero_info(f"adapters on the policy: {trainable_summary(policy)}")
        if self.disable_policy_dropout:
            disable_dropout(policy)
        self._logps_dtype = torch.promote_types(next(policy.parameters()).dtype, torch.float32)
        reference = (
            None
            if self.reference_name is None
            else load_causal_lm(self.reference_name, None, None, self.torch_dtype, key="model.reference")
        )
        precomputation = self._plan_reference_precomputation(policy if reference is None else reference)
        if reference is None and is_adapted(policy):  # the policy computes the reference: no second model
            if precomputation is not None and not precomputation.needs_model:
                precomputation.run(self.trainer, self.pair_loss.length_normalized)
            elif precomputation is not None and self.trainer.state.fn == TrainerFn.FITTING:
                self._reference_precomputation = precomputation
            self._finish_models(policy, None)
            return
        if precomputation is not None and not precomputation.needs_model:  # every split cached: no reference model
            precomputation.run(self.trainer, self.pair_loss.length_normalized)
            reference = None
        elif precomputation is not None and self._may_compute_reference_later():
            self._reference_precomputation = precomputation
            reference = None if reference is None else frozen_copy(reference)  # None: the initial policy computes
        else:
            reference = frozen_copy(policy if reference is None else reference)  # resident reference model
        self._finish_models(policy, reference)

    def _finish_models(self, policy: torch.nn.Module, reference: torch.nn.Module | None) -> None:
        if self.activation_checkpointing:
            apply_activation_checkpointing(policy)
        strategy = self.trainer.strategy if self._trainer is not None else None
        self.policy, self.reference = prepare_models(strategy, [policy, reference])

    def _plan_reference_precomputation(self, reference: torch.nn.Module) -> ReferencePrecomputation | None:
        """Which splits of the DataModule (training and validation sets) are cached, for the reference's *initial*
        weights (before any checkpoint is restored); None when precomputation is off, the stage reads other splits
        (test, predict), or the DataModule holds no ``datasets`` splits."""
        if not self.precompute_reference or self._trainer is None:
            return None
        if self.trainer.state.fn not in (TrainerFn.FITTING, TrainerFn.VALIDATING):
            return None
        settings = {
            "precision": str(self.trainer.precision),
            "torch_dtype": self.torch_dtype,
            "attn_implementation": self.attn_implementation,
        }
        digest = self.trainer.strategy.broadcast(weights_digest(reference_state(reference)), src=0)
        return ReferencePrecomputation.plan(self.trainer, digest, settings, ReferenceCache(self.reference_cache_dir))

    def _may_compute_reference_later(self) -> bool:
        """Missing log-probs are computed only while fitting, and, when the initial policy is the reference, only
        if no checkpoint will overwrite its weights first (resuming); otherwise a resident reference model is used."""
        if self.trainer.state.fn != TrainerFn.FITTING:
            return False
        return self.reference_name is not None or self.trainer.ckpt_path is None

    def on_fit_start(self) -> None:
        self._equip_reference_logps()  # normally done already, in configure_optimizers

    def _equip_reference_logps(self) -> None:
        """Compute the missing reference log-probs, attach them to the data sets, then drop the reference model.

        Runs once the models sit on their devices (wrapped and sharded) and before anything builds a training
        DataLoader: ``configure_optimizers`` is the first hook after the strategy's setup, and its
        ``estimated_stepping_batches`` already builds the loader from ``datamodule.train_dataset``.
        """
        precomputation, self._reference_precomputation = self._reference_precomputation, None
        if precomputation is None:
            return
        datamodule = precomputation.datamodule
        strategy = self.trainer.strategy
        model = self.reference if self.reference is not None else self.policy
        uses_policy = model is self.policy
        collate = PairCollator(datamodule.tokenizer.pad_token_id, getattr(datamodule, "pad_to_multiple_of", None))
        batch_size = getattr(datamodule, "val_batch_size", None) or getattr(datamodule, "batch_size", 8)

        progress = self.trainer.progress_bar_callback is not None

        def compute(dataset, name: str) -> ReferenceLogps:
            return compute_reference_logps(
                model, dataset, collate, batch_size, strategy.root_device, strategy.global_rank, strategy.world_size,
                gather=self.all_gather, forward=self._reference_forward, progress=progress,
                description=f"reference log-probs {name}",
            )  # fmt: skip

        was_training = self.training
        self.eval()
        try:
            with reference_mode(self.policy) if uses_policy else contextlib.nullcontext():
                precomputation.run(self.trainer, self.pair_loss.length_normalized, compute)
        finally:
            self.train(was_training)
        self.reference = None
        reshard(self.policy)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Reconcile the reference weights of a checkpoint with this run's reference (single-file checkpoints).

        A run with precomputed reference log-probs holds no reference model, so its checkpoints carry no
        ``reference.*`` weights, while a later stage may need a resident one (and the other way round). The resident
        reference is then the one this run built from ``model`` / ``reference`` (for a randomly initialised
        ``model_config`` that is the initial policy only under the same seed).
        """
        state = checkpoint.get("state_dict")
        if state is None:
            return
        saved = [key for key in state if key.startswith("reference.")]
        if self.reference is None:
            for key in saved:
                del state[key]
        elif not saved:
            rank_zero_info(
                "the checkpoint holds no reference weights (they were precomputed): using the reference built from"
                " the configuration"
            )
            state.update({f"reference.{k}": v for k, v in self.reference.state_dict().items()})

    def _reference_forward(self, model: torch.nn.Module, batch: dict[str, Tensor]) -> Tensor:
        """Logits of ``model``, routed through the strategy's wrapper of the LightningModule when there is one (DDP),
        as Lightning routes ``validation_step``."""
        strategy = self.trainer.strategy
        with strategy.precision_plugin.forward_context():
            if strategy.model is not None and strategy.model is not self:
                return strategy._forward_redirection(strategy.model, self, "_model_logits", model, batch)
            return self._model_logits(model, batch)

    #: a method of the module, so that the strategy's forward redirection can call it by name
    _model_logits = staticmethod(batch_logits)

    def train(self, mode: bool = True) -> RobustDPO:
        """Keep the reference in eval mode whatever Lightning toggles."""
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        return self

    # --- forward -----------------------------------------------------------------------------------------------
    def _logps(self, model: torch.nn.Module, batch: dict[str, Tensor]) -> PairLogps:
        logits = batch_logits(model, batch)
        logps = sequence_logprobs(
            logits, batch["labels"], average=self.pair_loss.length_normalized, chunk_rows=self.logprob_chunk_rows
        )
        half = logps.shape[0] // 2
        return PairLogps(logps[:half], logps[half:])

    @torch.no_grad()
    def reference_logps(self, batch: dict[str, Tensor]) -> PairLogps:
        if "reference_chosen_logps" in batch:
            chosen, rejected = batch["reference_chosen_logps"], batch["reference_rejected_logps"]
            return PairLogps(chosen.to(self._logps_dtype), rejected.to(self._logps_dtype))
        if self.reference is None and self._adapter_config is not None:  # the base model (+ starting adapter)
            with reference_mode(self.policy):
                return self._logps(self.policy, batch)
        if self.reference is None:
            raise RuntimeError(
                "this batch carries no precomputed reference log-probs and no reference model is resident: they are"
                " precomputed for the DataModule's train_dataset and val_datasets only; set"
                " model.precompute_reference: false to keep a reference model resident"
            )
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

            # manual gradient accumulation: each micro-batch's objective counts 1/accumulate of the step
            accumulate = self.accumulate_grad_batches
            optimizer = self.optimizers()
            if batch_idx % accumulate == 0:
                optimizer.zero_grad()
            pairs, result = self.robust.manual_step(forward, lambda loss: self.manual_backward(loss / accumulate))
            self.nonfinite.observe_loss(result.loss)
            policy = policies[0]
            if (batch_idx + 1) % accumulate == 0 or self.trainer.is_last_batch:
                optimizer.step()  # clipping happens in on_before_optimizer_step, after any loss-scale unscaling
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

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        refuse_nonfinite_checkpoint(checkpoint)
        checkpoint[RUN_RECORD_KEY] = run_record(self, self.policy, self._adapter_config)  # what `rdpo export` reads

    # --- optimisation ------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        self._equip_reference_logps()
        params = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        total = int(self.trainer.estimated_stepping_batches)
        if self.accumulate_grad_batches > 1 and total != self.trainer.max_steps:
            total = math.ceil(total / self.accumulate_grad_batches)  # Lightning counts manual micro-batches
        total = max(1, total)
        schedule = warmup_cosine(self.warmup_steps, total, self.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm=None
    ) -> None:
        """Automatic optimisation: Lightning calls this after unscaling; clip the global norm over all shards."""
        value = gradient_clip_val if gradient_clip_val is not None else self.gradient_clip_val
        if value is None:
            return
        if gradient_clip_algorithm not in (None, "norm"):
            self.clip_gradients(optimizer, gradient_clip_val=value, gradient_clip_algorithm=gradient_clip_algorithm)
            return
        clip_grad_norm(self.policy, self._clipped_parameters(optimizer), value)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Guard against non-finite losses/gradients; under manual optimisation Lightning skips
        ``configure_gradient_clipping``, so clip here too (after any loss-scale unscaling)."""
        self.nonfinite.before_optimizer_step(self, optimizer)
        if not self.automatic_optimization and self.gradient_clip_val is not None:
            clip_grad_norm(self.policy, self._clipped_parameters(optimizer), self.gradient_clip_val)

    @staticmethod
    def _clipped_parameters(optimizer: torch.optim.Optimizer) -> list[Tensor]:
        return [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
