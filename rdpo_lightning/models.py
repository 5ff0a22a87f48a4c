"""Loading the policy and reference: a Hugging Face causal LM by name or path, or a fresh one from a config."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from rdpo_lightning.data.packing import PACK_INDEX, unpack_token_logps
from rdpo_lightning.dropout import check_dropout_off, disable_dropout
from rdpo_lightning.errors import InputError
from rdpo_lightning.fused_logprobs import fused_token_logps, unwrap_causal_lm
from rdpo_lightning.logprobs import DEFAULT_CHUNK_ROWS, token_logprobs
from rdpo_lightning.router_aux import router_aux_loss, router_logits_request

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


def frozen_copy(model: nn.Module) -> nn.Module:
    """A detached, frozen, dropout-free copy: the default reference policy."""
    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    disable_dropout(reference)
    return reference.eval()


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | bool]:
    """The forward's keyword arguments for a collated batch (no KV cache): a padded batch passes its attention mask,
    a packed one its restarting ``position_ids`` and no mask (so transformers separates the packed sequences)."""
    if PACK_INDEX in batch:
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}


def batch_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The logits of a collated batch of pairs (one full forward per sequence)."""
    return model(**model_inputs(batch)).logits


@dataclass
class TokenScores:
    """What one forward of a collated batch gives the objective: per-token response log-probs and their mask, (2B,
    T−1) in the pair layout, and the router load-balancing loss of a Mixture-of-Experts model when asked for."""

    logps: torch.Tensor
    mask: torch.Tensor
    router_aux_loss: torch.Tensor | None = None


def score_tokens(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    chunk_rows: int | None = DEFAULT_CHUNK_ROWS,
    fused: bool = True,
    router_aux: bool = False,
) -> TokenScores:
    """The one forward that yields log-probs, for training, the reference cache and the DDP-redirected reference
    forward.

    ``fused``: through the output layer chunk by chunk, never building the logits (:mod:`rdpo_lightning.fused_logprobs`;
    a model it cannot handle falls back with one log line); otherwise full logits, log-softmaxed a chunk of rows at a
    time (``chunk_rows``). A packed (padding-free) batch is unpacked to the pair layout. ``router_aux``: ask a
    Mixture-of-Experts model for its router logits and return its load-balancing loss
    (:mod:`rdpo_lightning.router_aux`).
    """
    packed = PACK_INDEX in batch
    if packed:
        check_packing_support(model, batch)
    inputs = {**model_inputs(batch), **router_logits_request(model, router_aux)}
    outputs: list = []
    result = fused_token_logps(model, inputs, batch["labels"], on_output=outputs.append) if fused else None
    if result is None:
        outputs.append(model(**inputs))
        result = token_logprobs(outputs[-1].logits, batch["labels"], chunk_rows)
    logps, mask = unpack_token_logps(*result, batch[PACK_INDEX]) if packed else result
    return TokenScores(logps, mask, router_aux_loss(model, outputs[-1], batch) if router_aux else None)


def token_logps(
    model: nn.Module, batch: dict[str, torch.Tensor], chunk_rows: int | None = DEFAULT_CHUNK_ROWS, fused: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token response log-probs and their mask, (2B, T−1) in the pair layout of the collated ``batch``
    (:func:`score_tokens` without the router term)."""
    scores = score_tokens(model, batch, chunk_rows, fused)
    return scores.logps, scores.mask


_PACKING_CHECKED = "_rdpo_packing_checked"


@torch.no_grad()
def check_packing_support(model: nn.Module, batch: dict[str, torch.Tensor]) -> None:
    """Refuse a model whose attention lets a packed sequence see the one before it (once per model).

    Two 4-token sequences packed into one row must give the second one the logits it has alone; transformers'
    masking utilities do this from the restarting ``position_ids`` (sdpa, eager, flash attention), a model with its
    own masking code may not.
    """
    lm = unwrap_causal_lm(model)
    if getattr(lm, _PACKING_CHECKED, False):
        return
    ids = batch["input_ids"].flatten()[:8]
    if ids.numel() < 8:
        ids = ids.repeat(8)[:8]
    first, second = ids[:4].unsqueeze(0), ids[4:].unsqueeze(0)
    positions = torch.arange(4, device=ids.device).unsqueeze(0)
    was_training = model.training
    model.eval()
    try:
        together = model(input_ids=torch.cat([first, second], 1), position_ids=positions.repeat(1, 2), use_cache=False)
        alone = model(input_ids=second, attention_mask=torch.ones_like(second), use_cache=False)
    finally:
        model.train(was_training)
    precise = alone.logits.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled(ids.device.type)
    tolerance = 1e-3 if precise else 5e-2
    want, got = alone.logits.double(), together.logits[:, 4:].double()
    if (got - want).abs().max() > tolerance * want.abs().max().clamp(min=1e-6):
        attention = getattr(lm.config, "_attn_implementation", None)
        raise InputError(
            f"data.padding_free: true needs a model whose attention keeps packed sequences apart by their"
            f" position_ids; {type(lm).__name__} (attn_implementation={attention!r}) lets one see the other: set"
            " data.padding_free: false (data.group_by_length: true still cuts most padding)"
        )
    object.__setattr__(lm, _PACKING_CHECKED, True)


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

    from rdpo_lightning.adapters import attach_adapters, is_adapted, peft_config_dict, trainable_summary

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
