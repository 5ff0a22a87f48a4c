"""The LightningModule: a policy, a frozen reference, a pair loss and a robust strategy.

The module computes per-pair losses from one concatenated (2B, T) forward and hands them to its
:class:`~rdpo_lightning.robust.RobustLoss`; it never asks which robust method it runs.
"""

from __future__ import annotations

import contextlib
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from peft import PeftConfig
from torch import Tensor

from rdpo_lightning.accumulation import (
    SCOPES,
    AccumulationWindow,
    MicroBatch,
    WindowPasses,
    hold_logging_step,
    optimizer_steps,
    run_window,
    trainer_accumulation_refusal,
    warn_if_degenerate,
)
from rdpo_lightning.adapter_checkpoints import AdapterCheckpoints
from rdpo_lightning.adapters import peft_config_dict, reference_mode
from rdpo_lightning.checks import check_choice, check_int_at_least, check_interval, check_non_negative, check_positive
from rdpo_lightning.data.packing import PACK_INDEX
from rdpo_lightning.data.sampler import load_pending_loader_states
from rdpo_lightning.distributed import (
    apply_activation_checkpointing,
    clip_grad_norm,
    is_sharded,
    prepare_models,
    reshard,
)
from rdpo_lightning.embeddings import embedding_capture
from rdpo_lightning.errors import InputError
from rdpo_lightning.guards import POLICIES as NONFINITE_POLICIES
from rdpo_lightning.guards import NonFiniteGuard, refuse_nonfinite_checkpoint
from rdpo_lightning.logprobs import DEFAULT_CHUNK_ROWS
from rdpo_lightning.losses import PairLoss, SigmoidLoss
from rdpo_lightning.models import (
    build_policy,
    check_packing_support,
    load_causal_lm,
    resolve_dtype,
    score_tokens,
    token_logps,
)
from rdpo_lightning.optim_checks import check_optimizer
from rdpo_lightning.pair_scores import PairLogps, PairScores
from rdpo_lightning.reference_cache import ReferenceCache, ReferenceSource, reconcile_reference_state
from rdpo_lightning.reproducibility import seed_training_batch
from rdpo_lightning.robust import NoRobust, RobustLoss, RobustOutput, ScoredPairs
from rdpo_lightning.router_aux import router_aux_coefficient
from rdpo_lightning.run_record import KEY as RUN_RECORD_KEY
from rdpo_lightning.run_record import run_record
from rdpo_lightning.schedules import warmup_cosine


class RobustDPO(L.LightningModule):
    """Preference optimisation with a swappable robust strategy.

    Args:
        model: Hugging Face name or local path of the policy (``AutoModelForCausalLM``).
        model_config: instead of ``model``, a config dict (with ``model_type``) for a randomly initialised policy.
        peft: adapters to train instead of the whole policy: a PEFT config by ``class_path`` (``peft.LoraConfig``);
            the reference is then the base model itself, no second copy (see :mod:`rdpo_lightning.adapters`). Its
            ``to_dict()`` is accepted too: that is the form the checkpoint's hyperparameters keep, which
            ``rdpo fit --ckpt_path`` feeds back into the configuration on resume.
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
        logprob_chunk_rows: rows per float32 log-prob chunk (bounds memory; None: all rows at once) on the
            full-logits path.
        fused_logprobs: compute response log-probs through the output layer chunk by chunk from the body's hidden
            states, never building the (rows, T, vocabulary) logits (:mod:`rdpo_lightning.fused_logprobs`); a model
            it cannot handle falls back to the full-logits path with one log line.
        torch_dtype, attn_implementation: passed to ``from_pretrained`` / ``from_config``.
        on_nonfinite: a NaN/inf loss or gradient ``stop``s the fit with a checkpoint of the last good state, or the
            step is ``skip``ped with a warning (see :mod:`rdpo_lightning.guards`).
        precompute_reference: compute the reference log-probs of every training and validation pair once before
            fitting (cached on disk, see :mod:`rdpo_lightning.reference_cache`) and keep no reference model during
            training; False: a frozen reference model stays resident (sharded like the policy under FSDP).
        reference_cache_dir: where the cached reference log-probs live (default ``$RDPO_CACHE/reference_logps``).
        activation_checkpointing: recompute each transformer block's activations in backward (non-reentrant).
        accumulate_grad_batches: loader batches (micro-batches) per optimizer step. The robust objective is formed
            over the whole optimizer batch (micro-batches × this × data-parallel ranks), exactly, for every strategy
            (:mod:`rdpo_lightning.accumulation`; manual optimisation). ``trainer.accumulate_grad_batches`` is refused:
            it would form the objective per micro-batch.
        objective_scope: ``optimizer_batch`` (default) or ``micro_batch``: each micro-batch's objective formed alone
            and averaged by pair share (what Lightning's accumulation does; kept for comparison).
        router_aux_loss_coef: weight of a Mixture-of-Experts policy's router load-balancing loss in the training
            objective (logged as ``train/router_aux_loss``); None: the config's ``router_aux_loss_coef`` for a model
            whose config has ``output_router_logits`` (Mixtral, Qwen-MoE), 0 for any other
            (:mod:`rdpo_lightning.router_aux`).
        adapter_only_checkpoints: a LoRA run's checkpoints hold the adapters (and optimizer state) only, not the
            frozen base; they record the base (``model.model`` and a digest of its weights) and refuse another one on
            resume and export (:mod:`rdpo_lightning.adapter_checkpoints`). Default (null): on for adapters on a
            ``model.model`` base under single device, DDP or FSDP2Strategy; off for a ``model_config`` base, whose
            random weights exist in no file to re-read.
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
        if (model is None) == (model_config is None):
            raise ValueError("give exactly one of model.model (a name or path) and model.model_config")
        if model_config is not None and "model_type" not in model_config:
            raise ValueError("model.model_config needs a 'model_type' key (e.g. gpt2, llama)")
        check_positive("model.beta", beta)
        check_non_negative("model.warmup_steps", warmup_steps)
        check_interval("model.min_lr_ratio", min_lr_ratio, 0.0, 1.0, open_low=False, open_high=False)
        if gradient_clip_val is not None:
            check_positive("model.gradient_clip_val", gradient_clip_val)
        check_int_at_least("model.logprob_chunk_rows", logprob_chunk_rows, 1, allow_none=True)
        resolve_dtype(torch_dtype)
        check_choice("model.on_nonfinite", on_nonfinite, NONFINITE_POLICIES)
        self.nonfinite = NonFiniteGuard(on_nonfinite)
        check_int_at_least("model.accumulate_grad_batches", accumulate_grad_batches, 1)
        check_optimizer(optimizer)  # its hyper-parameters, now rather than after the data and models are built
        if router_aux_loss_coef is not None:
            check_non_negative("model.router_aux_loss_coef", router_aux_loss_coef)
        check_choice("model.objective_scope", objective_scope, SCOPES)
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
        self.references = ReferenceSource(
            precompute_reference,
            ReferenceCache(reference_cache_dir),
            {
                "torch_dtype": torch_dtype,
                "attn_implementation": attn_implementation,
                "logprobs": "fused" if fused_logprobs else "full_logits",  # equal to ~1e-7, not bitwise
            },
        )
        self.activation_checkpointing = activation_checkpointing
        self.adapter_checkpoints = AdapterCheckpoints(adapter_only_checkpoints)
        self.accumulate_grad_batches = accumulate_grad_batches
        self.router_aux_loss_coef = router_aux_loss_coef
        self._router_aux_coef = 0.0  # resolved from the policy's config in configure_model
        self.objective_scope = objective_scope
        self.window = AccumulationWindow(accumulate_grad_batches)
        self._joined_window = False
        self.automatic_optimization = self.robust.automatic_optimization and accumulate_grad_batches == 1
        self.policy: torch.nn.Module | None = None
        self.reference: torch.nn.Module | None = None
        self._logps_dtype = torch.float32

    def configure_callbacks(self) -> list:
        """The first hook that sees the Trainer, before Lightning's own checks: refuse its accumulation here."""
        if self._trainer is not None and self.trainer.state.fn == "fit":
            refusal = trainer_accumulation_refusal(self.trainer.accumulate_grad_batches, self.robust)
            if refusal is not None:
                raise InputError(refusal)
        return []

    # --- models ------------------------------------------------------------------------------------------------
    def _tokenizer(self) -> Any:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return getattr(datamodule, "tokenizer", None)

    def setup(self, stage: str) -> None:
        """Refuse, before any model is built, what the chosen Trainer strategy cannot run."""
        strategy = self.trainer.strategy
        refusal = self.robust.sharding_refusal() if is_sharded(strategy) else None
        if refusal is not None:
            raise InputError(f"{refusal} (strategy: {type(strategy).__name__})")
        refusal = self.robust.accumulation_refusal(self.accumulate_grad_batches)
        if refusal is not None:
            raise InputError(refusal)
        self.robust.setup_data(getattr(self.trainer, "datamodule", None))
        adapted = self.peft is not None or self.adapter is not None
        self.adapter_checkpoints.setup(strategy, adapted, self.model_name)

    def configure_model(self) -> None:
        """Build the policy (and, unless its log-probs are precomputed, the reference) lazily, once the DataModule's
        tokenizer exists; then checkpoint and shard them as the Trainer's strategy wants."""
        if self.policy is not None:
            return
        policy, self._adapter_config = build_policy(
            self.model_name, self.model_config, self._tokenizer(), self.torch_dtype, self.attn_implementation,
            quantization=self.quantization, peft=self.peft, adapter=self.adapter,
            disable_policy_dropout=self.disable_policy_dropout,
        )  # fmt: skip
        self._logps_dtype = torch.promote_types(next(policy.parameters()).dtype, torch.float32)
        self._router_aux_coef = router_aux_coefficient(policy, self.router_aux_loss_coef)
        self.adapter_checkpoints.note_base(policy)  # before sharding: every rank holds the whole base
        reference = None
        if self.pair_loss.uses_reference:
            named = None
            if self.reference_name is not None:
                named = load_causal_lm(self.reference_name, None, None, self.torch_dtype, key="model.reference")
            digest = self.adapter_checkpoints.reference_digest(policy) if named is None else None  # hashed once
            reference = self.references.build(self._trainer, policy, named, self.pair_loss.length_normalized, digest)
        if self.activation_checkpointing:
            apply_activation_checkpointing(policy)
        strategy = self.trainer.strategy if self._trainer is not None else None
        self.policy, self.reference = prepare_models(strategy, [policy, reference])

    def on_fit_start(self) -> None:
        self._equip_reference_logps()  # normally done already, in configure_optimizers

    def _equip_reference_logps(self) -> None:
        """Compute the missing reference log-probs, attach them to the data sets, then drop the reference model.

        Runs once the models sit on their devices (wrapped and sharded) and before anything builds a training
        DataLoader: ``configure_optimizers`` is the first hook after the strategy's setup, and its
        ``estimated_stepping_batches`` already builds the loader from the DataModule's training split.
        """
        model = self.reference if self.reference is not None else self.policy
        was_training = self.training
        self.eval()
        try:
            with reference_mode(self.policy) if model is self.policy else contextlib.nullcontext():
                equipped = self.references.equip(
                    self.trainer, model, self.pair_loss.length_normalized, self._reference_forward, self.all_gather
                )
        finally:
            self.train(was_training)
        if equipped:
            self.reference = None
            reshard(self.policy)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse an adapter-only checkpoint of another base and put this run's base into it; reconcile the reference
        weights of a single-file checkpoint with this run's reference (see
        :func:`~rdpo_lightning.reference_cache.reconcile_reference_state`)."""
        self.adapter_checkpoints.on_load(checkpoint, checkpoint.get(RUN_RECORD_KEY), self)
        state = checkpoint.get("state_dict")
        if state is not None and reconcile_reference_state(state, self.reference):
            rank_zero_info(
                "the checkpoint holds no reference weights (they were precomputed): using the reference built from"
                " the configuration"
            )

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
    def _pair_logps(self, model: torch.nn.Module, batch: dict[str, Tensor]) -> tuple[PairLogps, Tensor]:
        """Sequence log-probs and response token counts (2B,) of one concatenated forward."""
        logps, counts, _ = self._sequence_scores(model, batch)
        return logps, counts

    def _sequence_scores(
        self, model: torch.nn.Module, batch: dict[str, Tensor], router_aux: bool = False
    ) -> tuple[PairLogps, Tensor, Tensor | None]:
        """Sequence log-probs (summed, or per-token means for a length-normalised loss), response token counts (2B,)
        and (with ``router_aux``) the router load-balancing loss of one concatenated forward."""
        scores = score_tokens(model, batch, self.logprob_chunk_rows, self.fused_logprobs, router_aux)
        logps, mask = scores.logps, scores.mask
        counts = mask.sum(-1)
        values = logps.sum(-1)
        if self.pair_loss.length_normalized:
            values = values / counts.clamp(min=1)
        half = values.shape[0] // 2
        return PairLogps(values[:half], values[half:]), counts, scores.router_aux_loss

    @torch.no_grad()
    def reference_logps(self, batch: dict[str, Tensor]) -> PairLogps:
        if not self.pair_loss.uses_reference:  # reference-free loss: log-ratios are the policy's log-probs
            zeros = batch["input_ids"].new_zeros(batch["input_ids"].shape[0] // 2, dtype=self._logps_dtype)
            return PairLogps(zeros, zeros)
        if "reference_chosen_logps" in batch:
            chosen, rejected = batch["reference_chosen_logps"], batch["reference_rejected_logps"]
            return PairLogps(chosen.to(self._logps_dtype), rejected.to(self._logps_dtype))
        if self.reference is None and self._adapter_config is not None:  # the base model (+ starting adapter)
            with reference_mode(self.policy):
                return self._pair_logps(self.policy, batch)[0]
        if self.reference is None:
            raise RuntimeError(
                "this batch carries no precomputed reference log-probs and no reference model is resident: they are"
                " precomputed for the DataModule's training and validation splits only; set"
                " model.precompute_reference: false to keep a reference model resident"
            )
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
            policy, counts, aux = self._sequence_scores(self.policy, batch, router_aux)
        half = counts.shape[0] // 2
        scores = PairScores(policy, reference, counts[:half], counts[half:], router_aux_loss=aux)
        reversed_losses = (
            self.pair_loss.pair_losses(scores.swapped(), self.beta) if self.robust.needs_reversed_losses else None
        )
        return ScoredPairs(
            losses=self.pair_loss.pair_losses(scores, self.beta),
            scores=scores,
            columns=batch.get("columns", {}),
            embeddings=captured[-1] if captured else None,  # the last forward: the one scored (see token_logps)
            gather=self._gather,
            world_size=self.trainer.world_size if self._trainer is not None else 1,
            reversed_losses=reversed_losses,
        )

    def _gather(self, tensor: Tensor) -> Tensor:
        tensor = tensor.detach()
        if self._trainer is None or self.trainer.world_size == 1:
            return tensor
        return self.all_gather(tensor).reshape(-1)

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
        self._log_training(pairs, result, aux)
        return loss

    def _optimizer_step(self, window: list[MicroBatch]) -> None:
        """Manual optimisation: the window's forwards and backwards (:func:`run_window`), then one optimizer step."""
        optimizer = self.optimizers()
        optimizer.zero_grad()
        passes = WindowPasses(
            reference=self.reference_logps,
            forward=self.policy_forward,
            seed=lambda index: seed_training_batch(self.trainer, index),
            backward=self.manual_backward,
            scale_gradients=self._scale_gradients,
            gather=self._gather,
            world_size=self.trainer.world_size,
            router_aux_coef=self._router_aux_coef,
        )
        done = run_window(window, self.robust, passes, self.objective_scope)
        self.nonfinite.observe_loss(done.output.loss)
        optimizer.step()  # clipping happens in on_before_optimizer_step, after any loss-scale unscaling
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        self._log_training(done.pairs, done.output, done.router_aux)

    def _scale_gradients(self, factor: float) -> None:
        for param in self.policy.parameters():
            if param.grad is not None:
                param.grad.mul_(factor)

    def _log_training(self, pairs: ScoredPairs, result: RobustOutput, aux: Tensor | None) -> None:
        """``train/*`` describes the optimizer's batch (this rank's pairs of it; ``sync_dist`` averages ranks)."""
        self._log_pairs("train", pairs, prefixes=["train"])
        self.log("train/loss", result.loss.detach(), batch_size=pairs.losses.shape[0], sync_dist=True, prog_bar=True)
        if aux is not None:
            self.log("train/router_aux_loss", aux.detach(), batch_size=pairs.losses.shape[0], sync_dist=True)
        for name, value in result.metrics.items():
            self.log(f"train/robust/{name}", value, batch_size=pairs.losses.shape[0], sync_dist=True)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """Logs the TRL metric set of the in-distribution set (dataloader 0) under ``val/``, and returns the
        per-pair losses and implicit rewards of every set, from which
        :class:`~rdpo_lightning.callbacks.WorstCaseEvaluation` accumulates exact per-mixture metrics."""
        pairs = self.policy_forward(batch, self.reference_logps(batch))
        if dataloader_idx == 0:
            self._log_pairs("val", pairs, ["val"])
        chosen_rewards, rejected_rewards = pairs.scores.rewards(self.beta)
        return {"losses": pairs.losses.detach(), "chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards}

    def test_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        pairs = self.policy_forward(batch, self.reference_logps(batch))
        self._log_pairs("test", pairs, [f"test/{self._val_name(dataloader_idx)}"])

    def _val_name(self, index: int) -> str:
        names = getattr(getattr(self._trainer, "datamodule", None), "val_names", None) or []
        return names[index] if index < len(names) else str(index)

    def _log_pairs(self, stage: str, pairs: ScoredPairs, prefixes: list[str]) -> None:
        """The TRL-style metric set under each prefix (``train``, ``val``, ``test/<name>``)."""
        losses = pairs.losses
        values = pairs.scores.metrics(self.beta)
        values["pair_loss" if stage == "train" else "loss"] = losses.detach().mean()
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
        warn_if_degenerate(self.trainer, self.robust, self.accumulate_grad_batches, self.objective_scope)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        seed_training_batch(self.trainer, batch_idx)
        if self._joined_window:
            hold_logging_step(self.trainer)
            self._joined_window = False

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._joined_window = len(self.window) > 0  # the batch waits in the window: no optimizer step yet

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if len(self.window):
            rank_zero_warn(
                f"a checkpoint is written inside an accumulation window ({len(self.window)} of"
                f" {self.window.size} micro-batches seen): a fit resumed from it starts the next window at the next"
                " micro-batch, without these; checkpoint after optimizer steps (ModelCheckpoint every_n_train_steps)"
            )
        refuse_nonfinite_checkpoint(checkpoint)
        record = run_record(self, self.policy, self._adapter_config)  # what `rdpo export` reads
        checkpoint[RUN_RECORD_KEY] = record
        self.adapter_checkpoints.on_save(checkpoint, record, self.policy)  # adapter-only: the base stays out

    # --- optimisation ------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        self._equip_reference_logps()
        params = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        total = optimizer_steps(self.trainer, self.accumulate_grad_batches)
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
