"""The LightningModule: a policy, a frozen reference, a pair loss and a robust strategy.

The module computes per-pair losses from one concatenated (2B, T) forward and hands them to its
:class:`~rdpo_lightning.robust.RobustLoss`; it never asks which robust method it runs.
"""

from __future__ import annotations

import functools
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from peft import PeftConfig
from torch import Tensor

from rdpo_lightning.batch_layout import PACK_INDEX
from rdpo_lightning.checkpoints.adapter_only import AdapterCheckpoints
from rdpo_lightning.checkpoints.run_record import KEY as RUN_RECORD_KEY
from rdpo_lightning.checkpoints.run_record import init_args, run_record
from rdpo_lightning.data.sampler import load_pending_loader_states
from rdpo_lightning.losses import PairLoss, SigmoidLoss
from rdpo_lightning.models.adapters import peft_config_dict, reference_mode
from rdpo_lightning.models.embeddings import embedding_capture
from rdpo_lightning.models.loading import build_policy
from rdpo_lightning.models.logprobs import DEFAULT_CHUNK_ROWS
from rdpo_lightning.models.router_aux import router_aux_coefficient
from rdpo_lightning.models.scoring import check_packing_support, pair_sequence_logps, score_tokens, token_logps
from rdpo_lightning.models.sharding import (
    apply_activation_checkpointing,
    clip_grad_norm,
    gradients_of,
    prepare_models,
    reshard,
)
from rdpo_lightning.pair_scores import PairLogps, PairScores
from rdpo_lightning.robust import NoRobust, RobustLoss, ScoredPairs
from rdpo_lightning.training.accumulation import (
    AccumulationWindow,
    MicroBatch,
    WindowPasses,
    optimized_parameters,
    optimizer_steps,
    run_window,
    scale_gradients,
    warn_if_degenerate,
)
from rdpo_lightning.training.arguments import check_module_arguments, refuse_unsupported
from rdpo_lightning.training.guards import NonFiniteGuard, grad_scaler_active, refuse_nonfinite_checkpoint
from rdpo_lightning.training.optimizers import build_optimizer
from rdpo_lightning.training.reference_cache import (
    NO_RESIDENT_REFERENCE,
    ReferenceCache,
    ReferenceSource,
    precomputed_pair_logps,
    reconcile_reference_state,
)
from rdpo_lightning.training.reproducibility import seed_training_batch
from rdpo_lightning.training.resume import ResumeCheck
from rdpo_lightning.training.schedules import warmup_cosine_scheduler
from rdpo_lightning.training.step_metrics import log_pair_metrics, log_training_step
from rdpo_lightning.training.teardown import keep_training_state_on_device


class RobustDPO(L.LightningModule):
    """Preference optimisation with a swappable robust strategy.

    Args:
        model: Hugging Face name or local path of the policy (``AutoModelForCausalLM``).
        model_config: instead of ``model``, a config dict (with ``model_type``) for a randomly initialised policy.
        peft: adapters to train instead of the whole policy: a PEFT config by ``class_path`` (``peft.LoraConfig``), or
            its ``to_dict()`` (what checkpoints keep and a resume feeds back); the reference is then the base model
            itself, no second copy (:mod:`rdpo_lightning.models.adapters`).
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
        gradient_clip_val: gradient-norm clip, applied in automatic and manual optimisation alike (null: none; the
            norm is still measured, for the non-finite guard).
        disable_policy_dropout: zero dropout in the policy (the reference never has dropout).
        logprob_chunk_rows: rows per float32 log-prob chunk (bounds memory; None: all rows at once) on the
            full-logits path.
        fused_logprobs: response log-probs through the output layer chunk by chunk, never building the (rows, T,
            vocabulary) logits (:mod:`rdpo_lightning.models.fused_logprobs`); other models fall back with one log line.
        torch_dtype, attn_implementation: passed to ``from_pretrained`` / ``from_config``.
        on_nonfinite: a NaN/inf loss or gradient ``stop``s the fit with a checkpoint of the last good state, or the
            step is ``skip``ped with a warning (see :mod:`rdpo_lightning.training.guards`).
        precompute_reference: compute the reference log-probs of every training and validation pair once before
            fitting (cached on disk, see :mod:`rdpo_lightning.training.reference_cache`) and keep no reference model
            during training; False: a frozen reference model stays resident (sharded like the policy under FSDP).
        reference_cache_dir: where the cached reference log-probs live (default ``$RDPO_CACHE/reference_logps``).
        activation_checkpointing: recompute each transformer block's activations in backward (non-reentrant).
        accumulate_grad_batches: loader batches (micro-batches) per optimizer step; every strategy's objective is
            formed over the whole optimizer batch (micro-batches × this × ranks), exactly
            (:mod:`~rdpo_lightning.training.accumulation`); ``trainer.accumulate_grad_batches`` is refused.
        objective_scope: ``optimizer_batch`` (default) or ``micro_batch``: each micro-batch's objective formed alone
            and averaged by pair share (what Lightning's accumulation does; kept for comparison).
        router_aux_loss_coef: weight of a Mixture-of-Experts policy's router load-balancing loss in the objective
            (``train/router_aux_loss``); None: the config's ``router_aux_loss_coef`` for a model whose config has
            ``output_router_logits`` (Mixtral, Qwen-MoE), 0 for any other (:mod:`rdpo_lightning.models.router_aux`).
        adapter_only_checkpoints: a LoRA run's checkpoints hold the adapters (and optimizer state), not the frozen
            base; they record the base (``model.model``, a digest of its weights) and refuse another on resume and
            export (:mod:`rdpo_lightning.checkpoints.adapter_only`). Default (null): on for adapters on a
            ``model.model`` base under single device, DDP or FSDP2Strategy; off for a ``model_config`` base.
    """

    def __init__(
        self,
        model: str | None = None,
        model_config: dict[str, Any] | None = None,
        peft: PeftConfig | dict[str, Any] | None = None,
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
        fused_logprobs: bool = True,
        torch_dtype: str | None = None,
        attn_implementation: str | None = None,
        on_nonfinite: str = "stop",
        precompute_reference: bool = True,
        reference_cache_dir: str | None = None,
        activation_checkpointing: bool = False,
        accumulate_grad_batches: int = 1,
        router_aux_loss_coef: float | None = None,
        objective_scope: str = "optimizer_batch",
        adapter_only_checkpoints: bool | None = None,
    ) -> None:
        super().__init__()
        check_module_arguments(
            model=model, model_config=model_config, beta=beta, optimizer=optimizer, warmup_steps=warmup_steps,
            min_lr_ratio=min_lr_ratio, gradient_clip_val=gradient_clip_val, logprob_chunk_rows=logprob_chunk_rows,
            torch_dtype=torch_dtype, on_nonfinite=on_nonfinite, accumulate_grad_batches=accumulate_grad_batches,
            router_aux_loss_coef=router_aux_loss_coef, objective_scope=objective_scope,
        )  # fmt: skip
        self.nonfinite = NonFiniteGuard(on_nonfinite)
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
        self.fused_logprobs = bool(fused_logprobs)
        self.torch_dtype = torch_dtype
        self.attn_implementation = attn_implementation
        cache = ReferenceCache(reference_cache_dir)
        self.references = ReferenceSource(
            precompute_reference, cache, reference, torch_dtype, attn_implementation, fused_logprobs
        )
        self.activation_checkpointing = activation_checkpointing
        self.adapter_checkpoints = AdapterCheckpoints(adapter_only_checkpoints)
        self.accumulate_grad_batches = accumulate_grad_batches
        self.router_aux_loss_coef = router_aux_loss_coef
        self._router_aux_coef = 0.0  # resolved from the policy's config in configure_model
        self.objective_scope = objective_scope
        self.window = AccumulationWindow(accumulate_grad_batches)
        self.resume_check = ResumeCheck()
        self.automatic_optimization = self.robust.automatic_optimization and accumulate_grad_batches == 1
        self.policy: torch.nn.Module | None = None
        self.reference: torch.nn.Module | None = None
        self._logps_dtype = torch.float32

    def configure_callbacks(self) -> list:
        """The first hook that sees the Trainer, before Lightning's own checks: refuse its accumulation here."""
        if self._trainer is not None and self.trainer.state.fn == "fit":
            refuse_unsupported(self.robust, None, 1, self.trainer.accumulate_grad_batches)
        return []

    # --- models ------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Refuse, before any model is built, what the chosen Trainer strategy cannot run."""
        refuse_unsupported(self.robust, self.trainer.strategy, self.accumulate_grad_batches)
        self.robust.setup_data(getattr(self.trainer, "datamodule", None))
        adapted = self.peft is not None or self.adapter is not None
        self.adapter_checkpoints.setup(self.trainer.strategy, adapted, self.model_name)
        keep_training_state_on_device(self.trainer.strategy)  # no host copy of gradients/optimizer state at the end

    def configure_model(self) -> None:
        """Build the policy (and, unless its log-probs are precomputed, the reference) lazily, once the DataModule's
        tokenizer exists; then checkpoint and shard them as the Trainer's strategy wants."""
        if self.policy is not None:
            return
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        policy, self._adapter_config = build_policy(
            self.model_name, self.model_config, getattr(datamodule, "tokenizer", None), self.torch_dtype,
            self.attn_implementation, quantization=self.quantization, peft=self.peft, adapter=self.adapter,
            disable_policy_dropout=self.disable_policy_dropout,
        )  # fmt: skip
        self._logps_dtype = torch.promote_types(next(policy.parameters()).dtype, torch.float32)
        self._router_aux_coef = router_aux_coefficient(policy, self.router_aux_loss_coef)
        self.adapter_checkpoints.note_base(policy)  # before sharding: every rank holds the whole base
        reference = None
        if self.pair_loss.uses_reference:
            digest = self.adapter_checkpoints.reference_digest(policy)  # a LoRA base is hashed once
            reference = self.references.build(self._trainer, policy, self.pair_loss.length_normalized, digest)
        if self.activation_checkpointing:
            apply_activation_checkpointing(policy)
        strategy = self.trainer.strategy if self._trainer is not None else None
        self.policy, self.reference = prepare_models(strategy, [policy, reference])

    def on_fit_start(self) -> None:
        self._equip_reference_logps()  # normally done already, in configure_optimizers
        self.train()  # from_pretrained returns the policy in eval mode, and Lightning leaves modes as it finds them
        self._show_uncertainty_set()

    def _show_uncertainty_set(self) -> None:
        """The robust strategy's set, when it has one to show (MixtureDRO's mixtures): one log line and the
        TensorBoard text tab (``robust/uncertainty_set``), once, from global rank 0."""
        line = self.robust.uncertainty_set()
        if line is None or not self.trainer.is_global_zero:
            return
        rank_zero_info(line)
        for logger in self.trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_text"):
                experiment.add_text("robust/uncertainty_set", line, self.trainer.global_step)

    def _equip_reference_logps(self) -> None:
        """Compute the missing reference log-probs, attach them to the data sets, then drop the reference model.

        Runs once the models sit on their devices (wrapped and sharded) and before anything builds a training loader:
        ``configure_optimizers`` is the first hook after the strategy's setup, and its ``estimated_stepping_batches``
        already builds the loader from the DataModule's training split."""
        model = self.reference if self.reference is not None else self.policy
        normalized, forward = self.pair_loss.length_normalized, self._reference_forward
        if self.references.equip(self.trainer, model, model is self.policy, normalized, forward, self.all_gather):
            self.reference = None
            reshard(self.policy)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse an adapter-only checkpoint of another base and put this run's base into it; keep the initial policy
        to compute reference log-probs still missing (:meth:`ReferenceSource.before_restore`); fit a single-file
        checkpoint's reference weights to this run's reference (:func:`reconcile_reference_state`); say what this
        run configures differently and refuse what cannot resume (:class:`ResumeCheck`)."""
        self.adapter_checkpoints.on_load(checkpoint, checkpoint.get(RUN_RECORD_KEY), self)
        initial = self.references.before_restore(self.policy, self.reference)
        if initial is not None:
            self.reference = initial
        if "state_dict" in checkpoint:
            reconcile_reference_state(checkpoint["state_dict"], self.reference)
        objective = {"robust": init_args(self.robust), "pair_loss": init_args(self.pair_loss)}
        state = self.state_dict() if "state_dict" in checkpoint else None
        record = checkpoint.get(RUN_RECORD_KEY)
        self.resume_check.checkpoint_loaded(checkpoint, record, dict(self.hparams), objective, state)

    def _reference_forward(self, model: torch.nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Token log-probs of ``model``, routed through the strategy's wrapper of the LightningModule when there is
        one (DDP), as Lightning routes ``validation_step``."""
        strategy = self.trainer.strategy
        with strategy.precision_plugin.forward_context():
            if strategy.model is not None and strategy.model is not self:
                return strategy._forward_redirection(strategy.model, self, "_token_logps", model, batch)
            return self._token_logps(model, batch)

    def _token_logps(self, model: torch.nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """A method of the module, so that the strategy's forward redirection can call it by name."""
        return token_logps(model, batch, self.logprob_chunk_rows, self.fused_logprobs)

    def train(self, mode: bool = True) -> RobustDPO:
        """Keep the reference in eval mode whatever Lightning toggles."""
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        return self

    # --- forward -----------------------------------------------------------------------------------------------
    def _pair_logps(self, model: torch.nn.Module, batch: dict[str, Tensor], router_aux: bool = False):
        """Sequence log-probs, response token counts (2B,) and the router loss of one concatenated forward."""
        scores = score_tokens(model, batch, self.logprob_chunk_rows, self.fused_logprobs, router_aux)
        return (*pair_sequence_logps(scores, self.pair_loss.length_normalized), scores.router_aux_loss)

    @torch.no_grad()
    def reference_logps(self, batch: dict[str, Tensor]) -> PairLogps:
        if not self.pair_loss.uses_reference:  # reference-free loss: log-ratios are the policy's log-probs
            zeros = batch["input_ids"].new_zeros(batch["input_ids"].shape[0] // 2, dtype=self._logps_dtype)
            return PairLogps(zeros, zeros)
        precomputed = precomputed_pair_logps(batch, self._logps_dtype)
        if precomputed is not None:
            return precomputed
        if self.reference is None and self._adapter_config is not None:  # the base model (+ starting adapter)
            with reference_mode(self.policy):
                return self._pair_logps(self.policy, batch)[0]
        if self.reference is None:
            raise RuntimeError(NO_RESIDENT_REFERENCE)
        return self._pair_logps(self.reference, batch)[0]

    def policy_forward(
        self, batch: dict[str, Tensor], reference: PairLogps, capture: bool = False, shift: Tensor | None = None
    ) -> ScoredPairs:
        """The policy's scores and per-pair losses of a batch. With ``capture`` the input-embedding output z is kept
        (and ``shift`` added to it) through a forward hook, which works under FSDP where calling the embedding
        directly does not."""
        if PACK_INDEX in batch:
            check_packing_support(self.policy, batch)  # its probe forward must not meet the embedding hook
        router_aux = self.training and self._router_aux_coef != 0
        with embedding_capture(self.policy, batch, capture, shift) as captured, self.robust.forward_context():
            policy, counts, aux = self._pair_logps(self.policy, batch, router_aux)
        half = counts.shape[0] // 2
        scores = PairScores(policy, reference, counts[:half], counts[half:], router_aux_loss=aux)
        losses, reversed_losses = self.pair_loss.both_orders(scores, self.beta, self.robust.needs_reversed_losses)
        return ScoredPairs(
            losses=losses,
            scores=scores,
            columns=batch.get("columns", {}),
            embeddings=captured[-1] if captured else None,  # the last forward: the one scored (see token_logps)
            gather=self._gather,
            world_size=self.trainer.world_size if self._trainer is not None else 1,
            reversed_losses=reversed_losses,
        )

    def _gather(self, tensor: Tensor) -> Tensor:
        """``tensor`` detached and gathered from every data-parallel rank (flat)."""
        alone = self._trainer is None or self.trainer.world_size == 1
        return tensor.detach() if alone else self.all_gather(tensor.detach()).reshape(-1)

    # --- steps -------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        if not self.automatic_optimization:
            window = self.window.add(batch_idx, batch, last=self.trainer.is_last_batch)
            if window is not None:
                self._optimizer_step(window)
            return None
        reference = self.reference_logps(batch)
        pairs = self.policy_forward(batch, reference, capture=self.robust.needs_embeddings)
        result = self.robust(pairs)
        aux = pairs.scores.router_aux_loss
        loss = result.loss if aux is None else result.loss + self._router_aux_coef * aux
        self.nonfinite.observe_loss(loss)
        log_training_step(self, pairs, result, aux)
        return loss

    def _optimizer_step(self, window: list[MicroBatch]) -> None:
        """Manual optimisation: the window's forwards and backwards (:func:`run_window`), then one optimizer step."""
        optimizer = self.optimizers()
        optimizer.zero_grad()
        passes = WindowPasses(
            reference=self.reference_logps,
            forward=self.policy_forward,
            seed=functools.partial(seed_training_batch, self.trainer),
            backward=self.manual_backward,
            scale_gradients=functools.partial(scale_gradients, optimized_parameters(optimizer)),
            gather=self._gather,
            world_size=self.trainer.world_size,
            router_aux_coef=self._router_aux_coef,
        )
        done = run_window(window, self.robust, passes, self.objective_scope)
        self.nonfinite.observe_loss(done.output.loss)
        optimizer.step()  # clipping happens in on_before_optimizer_step, after any loss-scale unscaling
        if (scheduler := self.lr_schedulers()) is not None:
            scheduler.step()
        log_training_step(self, done.pairs, done.output, done.router_aux)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """Logs the in-distribution set's (dataloader 0) metrics under ``val/``; returns every set's per-pair losses
        and implicit rewards, from which :class:`~rdpo_lightning.callbacks.WorstCaseEvaluation` forms its metrics."""
        pairs = self.policy_forward(batch, self.reference_logps(batch))
        if dataloader_idx == 0:
            log_pair_metrics(self, "val", pairs, ["val"])
        chosen_rewards, rejected_rewards = pairs.scores.rewards(self.beta)
        return {"losses": pairs.losses.detach(), "chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards}

    # --- reliability: reproducible randomness, numerical guards, finite checkpoints -----------------------------
    def on_train_start(self) -> None:
        """After Lightning restored a checkpoint's optimizer and scheduler: the configured hyper-parameters back."""
        configs = self.trainer.lr_scheduler_configs
        self.resume_check.after_restore(self.trainer.optimizers[0], configs[0].scheduler if configs else None)
        load_pending_loader_states(self.trainer)
        warn_if_degenerate(self.trainer, self.robust, self.accumulate_grad_batches, self.objective_scope)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        seed_training_batch(self.trainer, batch_idx)
        self.window.before_batch(self.trainer)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.window.warn_if_open()
        refuse_nonfinite_checkpoint(checkpoint)
        record = run_record(self, self.policy, self._adapter_config)  # what `rdpo export` reads
        checkpoint[RUN_RECORD_KEY] = record
        self.adapter_checkpoints.on_save(checkpoint, record, self.policy)  # adapter-only: the base stays out

    # --- optimisation ------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        self._equip_reference_logps()
        trained = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer = build_optimizer(self.optimizer_factory, trained, loss_scaled=grad_scaler_active(self.trainer))
        self.resume_check.optimizer_built(optimizer)  # its configured groups, before a scheduler or checkpoint
        total = optimizer_steps(self.trainer, self.accumulate_grad_batches)
        schedule = warmup_cosine_scheduler(optimizer, self.warmup_steps, total, self.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm=None
    ) -> None:
        """Automatic optimisation: Lightning calls this after ``on_before_optimizer_step``, which has clipped the norm
        already (the guard reads that norm); only a trainer's ``gradient_clip_algorithm: value`` is left to do."""
        if gradient_clip_val is not None and gradient_clip_algorithm not in (None, "norm"):
            self.clip_gradients(
                optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm
            )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Measure (and clip) the global gradient norm, then let the non-finite guard decide from it and the losses.

        Lightning calls this after any loss-scale unscaling, in automatic and manual optimisation alike (it skips
        ``configure_gradient_clipping`` under manual optimisation), so norm clipping happens here in both."""
        norm = clip_grad_norm(self.policy, gradients_of(optimizer), self._norm_clip_value())
        self.nonfinite.before_optimizer_step(self, optimizer, norm)

    def _norm_clip_value(self) -> float | None:
        """The norm bound: the trainer's ``gradient_clip_val`` where it sets one (automatic optimisation only), else
        ``model.gradient_clip_val``; None under a trainer's value clipping or when clipping is off."""
        trainer_value = self.trainer.gradient_clip_val if self.automatic_optimization else None
        if trainer_value is not None:
            return trainer_value if self.trainer.gradient_clip_algorithm in (None, "norm") else None
        return self.gradient_clip_val
