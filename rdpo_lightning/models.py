"""Loading the policy and reference: a Hugging Face causal LM by name or path, or a fresh one from a config."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from rdpo_lightning.errors import InputError
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


def looks_local(name_or_path: str) -> bool:
    """Whether a model name is meant as a local path (a Hub id is ``name`` or ``owner/name``)."""
    return name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1 or "\\" in name_or_path


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
