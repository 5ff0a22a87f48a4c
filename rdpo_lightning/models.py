"""Loading the policy and reference: a Hugging Face causal LM by name or path, or a fresh one from a config."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from rdpo_lightning.logprobs import DEFAULT_CHUNK_ROWS, token_logprobs

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def resolve_dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    if name not in DTYPES:
        raise ValueError(f"model.torch_dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def load_causal_lm(
    name_or_path: str | None,
    config: dict[str, Any] | None = None,
    tokenizer: Any = None,
    torch_dtype: str | None = None,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """``from_pretrained(name_or_path)``, or a randomly initialised model from ``config`` (needs ``model_type``).

    For a config-built model the tokenizer fixes the vocabulary size and special-token ids, so a tiny model made
    for the embedded world always matches its tokenizer.
    """
    if (name_or_path is None) == (config is None):
        raise ValueError("give exactly one of model.model (a name or path) and model.model_config (a config dict)")
    dtype = resolve_dtype(torch_dtype)
    kwargs: dict[str, Any] = {}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if name_or_path is not None:
        if dtype is not None:
            kwargs["dtype"] = dtype
        return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    config = dict(config)
    model_type = config.pop("model_type", None)
    if model_type is None:
        raise ValueError("model.model_config needs a 'model_type' key (e.g. gpt2, llama)")
    if tokenizer is not None:
        config.setdefault("vocab_size", len(tokenizer))
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if getattr(tokenizer, key, None) is not None:
                config.setdefault(key, getattr(tokenizer, key))
    model_config = AutoConfig.for_model(model_type, **config)
    model = AutoModelForCausalLM.from_config(model_config, **kwargs)
    return model.to(dtype) if dtype is not None else model


def disable_dropout(model: nn.Module) -> None:
    """Dropout makes two forwards of one batch disagree; DPO (and WDPO's finite difference) want them equal."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def frozen_copy(model: nn.Module) -> nn.Module:
    """A detached, frozen, dropout-free copy: the default reference policy."""
    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    disable_dropout(reference)
    return reference.eval()


def batch_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The logits of a collated batch of pairs (no KV cache: one full forward per sequence)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits


def token_logps(
    model: nn.Module, batch: dict[str, torch.Tensor], chunk_rows: int | None = DEFAULT_CHUNK_ROWS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(label) of a collated batch under ``model`` and the mask of scored positions, (rows, T-1).

    The one seam every forward that yields log-probs goes through: the policy's training forward, the reference's,
    and the reference precomputation (also when the strategy redirects it through its wrapper).
    """
    return token_logprobs(batch_logits(model, batch), batch["labels"], chunk_rows)
