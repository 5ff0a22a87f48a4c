"""Dropout off in the policy, in every form a Hugging Face model applies it, and a probe that it really is off.

DPO wants two forwards of one batch to agree (the policy at step 0 is its reference; WDPO's finite difference
subtracts two forwards). Models apply dropout three ways: ``nn.Dropout`` modules; a float kept on a module and passed
to the attention kernel at forward time (``dropout=0.0 if not self.training else self.attention_dropout`` in Llama-style
attention, ``self.dropout`` in OPT, ``self.attn_dropout`` from ``attn_pdrop`` in GPTBigCode, ``self.layerdrop`` in
OPT's decoder, ``self.jitter_noise`` in Mixtral's router); and a config field read at forward time
(``self.config.attention_dropout`` in Falcon). All three are zeroed. The config's original values are kept on the
model, so what a checkpoint records (and ``rdpo export`` writes) is the user's config, not the zeroed one.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from rdpo_lightning.errors import InputError

#: names of train-time randomness rates: dropout, attn_pdrop, layerdrop, drop_path_rate, router_jitter_noise, ...
RATE_NAME = re.compile(r"drop|jitter")
_ORIGINALS = "_rdpo_config_dropout"
_CHECKED = "_rdpo_dropout_checked"


def _is_rate(name: str, value: Any) -> bool:
    return bool(RATE_NAME.search(name)) and isinstance(value, (int, float)) and not isinstance(value, bool)


def _configs(model: nn.Module) -> list[tuple[str, Any]]:
    """Every distinct config the model's modules hold, with a dotted name from the root config (nested configs such
    as ``text_config`` included)."""
    from transformers import PretrainedConfig

    found: dict[int, tuple[str, Any]] = {}

    def visit(prefix: str, config: Any) -> None:
        if id(config) in found:
            return
        found[id(config)] = (prefix, config)
        for name, value in vars(config).items():
            if isinstance(value, PretrainedConfig):
                visit(f"{prefix}{name}.", value)

    root = getattr(model, "config", None)
    if isinstance(root, PretrainedConfig):
        visit("", root)
    for module in model.modules():  # a config no other config holds: its rates are zeroed, not recorded
        config = getattr(module, "config", None)
        if isinstance(config, PretrainedConfig):
            visit(f"<{type(module).__name__}>.", config)
    return list(found.values())


def disable_dropout(model: nn.Module) -> None:
    """Zero every dropout rate of ``model``: ``nn.Dropout`` modules, rate attributes of modules, and rate fields of
    its configs (originals kept for :func:`recorded_config`)."""
    originals: dict[str, Any] = dict(getattr(model, _ORIGINALS, {}))
    for prefix, config in _configs(model):
        for name, value in list(vars(config).items()):
            if _is_rate(name, value) and value != 0:
                originals.setdefault(prefix + name, value)
                setattr(config, name, 0.0)
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if _is_rate(name, value) and value != 0:
                object.__setattr__(module, name, 0.0)
    object.__setattr__(model, _ORIGINALS, originals)


def recorded_config(model: nn.Module) -> dict[str, Any] | None:
    """``model.config.to_dict()`` with the dropout rates :func:`disable_dropout` zeroed put back (the config the
    user gave, which a checkpoint records and an export writes)."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    record = config.to_dict()
    for dotted, value in _originals(model).items():
        *path, name = dotted.split(".")
        target = record
        for part in path:
            target = target.get(part) if isinstance(target, dict) else None
        if isinstance(target, dict) and name in target:
            target[name] = value
    return record


def _originals(model: nn.Module) -> dict[str, Any]:
    while True:
        if hasattr(model, _ORIGINALS):
            return getattr(model, _ORIGINALS)
        inner = getattr(model, "module", None) or (model.get_base_model() if hasattr(model, "get_base_model") else None)
        if not isinstance(inner, nn.Module) or inner is model:
            return {}
        model = inner


@torch.no_grad()
def check_dropout_off(model: nn.Module, tokens: int = 8) -> None:
    """Refuse a policy whose train-mode forward is still random after :func:`disable_dropout` (once per model): two
    train-mode forwards of a few tokens must equal each other and the eval-mode forward. The probe runs under a
    forked RNG, so it changes no random stream of the run."""
    if getattr(model, _CHECKED, False):
        return
    parameter = next(model.parameters())
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    ids = (torch.arange(tokens, device=parameter.device) % max(1, int(config.vocab_size))).unsqueeze(0)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "use_cache": False}
    was_training = model.training
    devices = [parameter.device] if parameter.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            model.train()
            first, second = model(**inputs).logits.double(), model(**inputs).logits.double()
            model.eval()
            evaluated = model(**inputs).logits.double()
    finally:
        model.train(was_training)
    precise = parameter.dtype in (torch.float32, torch.float64)
    tolerance = (1e-5 if precise else 2e-2) * evaluated.abs().max().clamp(min=1e-6)
    if (first - second).abs().max() > tolerance or (first - evaluated).abs().max() > tolerance:
        raise InputError(
            f"model.disable_policy_dropout: {type(model).__name__}'s train-mode forward is still random after"
            " zeroing every dropout rate found (nn.Dropout modules, dropout/pdrop/jitter attributes and config"
            " fields); set model.disable_policy_dropout: false to train with it"
        )
    object.__setattr__(model, _CHECKED, True)
