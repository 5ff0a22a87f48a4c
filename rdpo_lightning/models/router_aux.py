"""The Mixture-of-Experts router load-balancing term: ``router_aux_loss_coef`` × the model's auxiliary loss.

Without it, preference training on Mixtral / Qwen-MoE can collapse expert use (a few experts take every token).
As in TRL's DPOTrainer: a model whose config has ``output_router_logits`` (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, ...)
gets the term in its objective, with the coefficient its config declares (``router_aux_loss_coef``) unless
``model.router_aux_loss_coef`` overrides it; the policy's training forward asks for the router logits, the reference
forward does not. The auxiliary loss is the one the model computes (its family's ``load_balancing_loss_func`` over
the tokens its attention mask counts: the concatenated chosen + rejected batch, padding excluded). A padding-free
batch has no attention mask, so there it is recomputed with the same function over the packed grid's real tokens
(the packs' trailing padding excluded), which gives the padded batch's value.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

import torch
from torch import Tensor, nn

from rdpo_lightning.batch_layout import PACK_INDEX
from rdpo_lightning.errors import InputError
from rdpo_lightning.models.fused_logprobs import unwrap_causal_lm

KEY = "model.router_aux_loss_coef"


def _text_config(lm: nn.Module) -> Any:
    config = lm.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def router_aux_coefficient(model: nn.Module, override: float | None) -> float:
    """The coefficient of the term for ``model``: ``override``, else its config's ``router_aux_loss_coef`` (0 when
    it declares none); 0 for a model without router logits, where a non-zero override is refused."""
    lm = unwrap_causal_lm(model)
    config = _text_config(lm)
    routed = hasattr(config, "output_router_logits")
    if override:
        if not routed:
            raise InputError(
                f"{KEY}={override}: {type(lm).__name__} is not a Mixture-of-Experts model that returns router logits"
                " (its config has no output_router_logits); leave it null"
            )
        return float(override)
    if override is not None or not routed:
        return 0.0
    return float(getattr(config, "router_aux_loss_coef", 0.0) or 0.0)


def router_logits_request(model: nn.Module, wanted: bool) -> dict[str, bool]:
    """The forward's ``output_router_logits`` argument: asked for when ``wanted``, turned off otherwise (a config
    with ``output_router_logits: true`` would make the reference compute a loss it discards); nothing for a model
    whose forward takes no such argument."""
    lm = unwrap_causal_lm(model)
    if not hasattr(_text_config(lm), "output_router_logits"):
        return {}
    if "output_router_logits" not in inspect.signature(lm.forward).parameters:
        return {}
    return {"output_router_logits": wanted}


def router_aux_loss(model: nn.Module, output: Any, batch: dict[str, Tensor]) -> Tensor | None:
    """The auxiliary loss of one forward's ``output`` of ``batch`` (None if the model gave none)."""
    aux = getattr(output, "aux_loss", None)
    if aux is None or PACK_INDEX not in batch:
        return aux if isinstance(aux, Tensor) else None
    lm = unwrap_causal_lm(model)
    balance = getattr(sys.modules.get(type(lm).__module__), "load_balancing_loss_func", None)
    router_logits = getattr(output, "router_logits", None)
    experts, top_k = getattr(lm, "num_experts", None), getattr(lm, "num_experts_per_tok", None)
    if balance is None or router_logits is None or experts is None or top_k is None:
        raise InputError(
            f"data.padding_free: true cannot count {type(lm).__name__}'s router load-balancing loss over real tokens"
            f" only; set data.padding_free: false or {KEY}: 0"
        )
    rows, width = batch["input_ids"].shape
    real = torch.zeros(rows * width, device=batch["input_ids"].device)
    real[batch[PACK_INDEX][batch[PACK_INDEX] >= 0]] = 1
    return balance(router_logits, experts, top_k, real.view(rows, width))


class RouterAuxOnce:
    """Adds ``coef`` × the auxiliary loss to exactly one backward of a manually optimised step: the first backward
    after a forward that produced it, with that forward's loss (WDPO's finite difference runs two forwards; where
    its first forward is differentiated w.r.t. the embeddings only, the term comes from the perturbed forward)."""

    def __init__(self, coef: float) -> None:
        self.coef = coef
        self.pending: Tensor | None = None
        self.added: Tensor | None = None

    def seen(self, aux: Tensor | None) -> None:
        if self.added is None:
            self.pending = aux

    def added_to(self, loss: Tensor) -> Tensor:
        if self.added is None and self.pending is not None:
            self.added, self.pending = self.pending, None
            return loss + self.coef * self.added
        return loss
