"""``model.*`` values checked where they enter, and combinations refused before any model is built: one line each,
naming the key."""

from __future__ import annotations

from typing import Any

from rdpo_lightning.checks import (
    check_choice,
    check_int_at_least,
    check_interval,
    check_non_negative,
    check_positive,
    resolve_dtype,
)
from rdpo_lightning.errors import InputError
from rdpo_lightning.models.sharding import is_sharded
from rdpo_lightning.robust import RobustLoss
from rdpo_lightning.training.accumulation import SCOPES, trainer_accumulation_refusal
from rdpo_lightning.training.guards import POLICIES as NONFINITE_POLICIES
from rdpo_lightning.training.optim_checks import check_optimizer


def check_module_arguments(
    *,
    model: str | None,
    model_config: dict[str, Any] | None,
    beta: float,
    optimizer: Any,
    warmup_steps: int,
    min_lr_ratio: float,
    gradient_clip_val: float | None,
    logprob_chunk_rows: int | None,
    torch_dtype: str | None,
    on_nonfinite: str,
    accumulate_grad_batches: int,
    router_aux_loss_coef: float | None,
    objective_scope: str,
) -> None:
    """Raise a one-line ``ValueError`` naming the first ``model.*`` key whose value cannot work."""
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
    check_int_at_least("model.accumulate_grad_batches", accumulate_grad_batches, 1)
    check_optimizer(optimizer)  # its hyper-parameters, now rather than after the data and models are built
    if router_aux_loss_coef is not None:
        check_non_negative("model.router_aux_loss_coef", router_aux_loss_coef)
    check_choice("model.objective_scope", objective_scope, SCOPES)


def refuse_unsupported(robust: RobustLoss, strategy: Any, window: int, trainer_accumulation: int = 1) -> None:
    """Raise :class:`InputError` when the strategy cannot run under the Trainer's strategy (double backward under
    sharding), over ``window`` micro-batches, or with Lightning's own accumulation (which would form the objective per
    micro-batch)."""
    refusal = robust.sharding_refusal() if is_sharded(strategy) else None
    if refusal is not None:
        raise InputError(f"{refusal} (strategy: {type(strategy).__name__})")
    for refusal in (robust.accumulation_refusal(window), trainer_accumulation_refusal(trainer_accumulation, robust)):
        if refusal is not None:
            raise InputError(refusal)
