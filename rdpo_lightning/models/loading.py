"""Loading the policy and reference: a Hugging Face causal LM by name or path, or a fresh one from a config."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from rdpo_lightning.checks import looks_local, resolve_dtype
from rdpo_lightning.errors import InputError
from rdpo_lightning.models.adapters import attach_adapters, is_adapted, peft_config_dict, trainable_summary
from rdpo_lightning.models.dropout import check_dropout_off, disable_dropout


def load_causal_lm(
    name_or_path: str | None,
    config: dict[str, Any] | None = None,
    tokenizer: Any = None,
    torch_dtype: str | None = None,
    attn_implementation: str | None = None,
    key: str = "model.model",
    quantization: dict[str, Any] | None = None,
) -> PreTrainedModel:
    """``from_pretrained(name_or_path)``, or a randomly initialised model from ``config`` (needs ``model_type``).

    For a config-built model the tokenizer fixes the vocabulary size and special-token ids, so a tiny model made
    for the embedded world always matches its tokenizer. ``key`` is the YAML key naming ``name_or_path`` in errors;
    ``quantization`` loads the weights with bitsandbytes (:func:`quantization_config`).
    """
    if (name_or_path is None) == (config is None):
        raise ValueError("give exactly one of model.model (a name or path) and model.model_config (a config dict)")
    dtype = resolve_dtype(torch_dtype)
    kwargs: dict[str, Any] = {}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if quantization is not None:
        if name_or_path is None:
            raise InputError("model.quantization needs pretrained weights to quantize (model.model), not model_config")
        kwargs["quantization_config"] = quantization_config(quantization)
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    if name_or_path is not None:
        if dtype is not None:
            kwargs["dtype"] = dtype
        return _from_pretrained(name_or_path, key, kwargs)
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


def _from_pretrained(name_or_path: str, key: str, kwargs: dict[str, Any]) -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained`` with one-line errors naming ``key`` for what a user mistypes."""
    local = Path(name_or_path).expanduser()
    if looks_local(name_or_path) and not local.exists():
        raise InputError(f"{key}={name_or_path}: no such directory")
    if local.is_dir() and not (local / "config.json").is_file():
        raise InputError(f"{key}={name_or_path}: the directory has no config.json (not a save_pretrained model)")
    try:
        return AutoModelForCausalLM.from_pretrained(str(local) if local.is_dir() else name_or_path, **kwargs)
    except OSError as error:  # a Hub id that cannot be fetched (offline, misspelt, gated)
        first = str(error).strip().splitlines()[0]
        raise InputError(
            f"{key}={name_or_path}: not a local directory, and not loadable from the Hub ({first})"
        ) from error


def quantization_config(arguments: dict[str, Any]) -> Any:
    """``BitsAndBytesConfig(**arguments)`` (dtype names allowed), refused with one line where it cannot run."""
    if not torch.cuda.is_available():
        raise InputError("model.quantization (bitsandbytes 4-bit/8-bit) needs a CUDA GPU; this machine has none")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise InputError("model.quantization needs bitsandbytes: pip install 'rdpo-lightning[qlora]'") from error
    from transformers import BitsAndBytesConfig

    arguments = dict(arguments)
    for name in ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage"):
        if isinstance(arguments.get(name), str):
            arguments[name] = resolve_dtype(arguments[name])
    try:
        return BitsAndBytesConfig(**arguments)
    except (TypeError, ValueError) as error:
        raise InputError(f"model.quantization: {error}") from error


def frozen_copy(model: nn.Module) -> nn.Module:
    """A detached, frozen, dropout-free copy: the default reference policy."""
    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    disable_dropout(reference)
    return reference.eval()


def build_policy(
    name_or_path: str | None,
    config: dict[str, Any] | None,
    tokenizer: Any,
    torch_dtype: str | None,
    attn_implementation: str | None,
    *,
    quantization: dict[str, Any] | None = None,
    peft: Any = None,
    adapter: str | None = None,
    disable_policy_dropout: bool = True,
) -> tuple[nn.Module, dict[str, Any] | None]:
    """The policy to train: the loaded model, wrapped in fresh (``peft``) or continued (``adapter``) adapters when
    asked, dropout-free when asked; and the trained adapter's config (None without adapters)."""
    from lightning.pytorch.utilities import rank_zero_info

    policy = load_causal_lm(
        name_or_path, config, tokenizer, torch_dtype, attn_implementation, quantization=quantization
    )
    if quantization is not None and peft is None and adapter is None:
        raise InputError("model.quantization: a quantized base cannot train; set model.peft (QLoRA) as well")
    policy = attach_adapters(policy, peft, adapter)
    adapter_config = None
    if is_adapted(policy):
        adapter_config = peft_config_dict(policy.peft_config["default"])
        rank_zero_info(f"adapters on the policy: {trainable_summary(policy)}")
    if disable_policy_dropout:
        disable_dropout(policy)
        check_dropout_off(policy)
    return policy, adapter_config
