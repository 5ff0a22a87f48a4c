"""``data.max_length`` against the model's context, before any pair is tokenised.

A sequence longer than the model's position table fails deep in the forward (GPT-2: an ``IndexError`` in the
position embedding, dozens of lines into the reference pass) or, for rotary models (Llama), trains silently past
the context the model was made for. So the DataModule asks the module's models (policy and named reference) for
their context first: a ``max_length`` above it is lowered to it, with one warning line saying so (a config written
for one model stays usable with a smaller one, and every cut is counted in the truncation report); a
``max_prompt_length`` that leaves no room for a response within that context, or a ``pad_to_multiple_of`` that
rounds batches past it, is an error naming the key.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from lightning.pytorch.utilities.rank_zero import rank_zero_only

from rdpo_lightning.errors import InputError

log = logging.getLogger(__name__)

#: config attributes that hold a model's number of positions, in the order transformers' configs use them
POSITION_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length", "seq_length")


def config_context(config: Any) -> tuple[str, int] | None:
    """(attribute, positions) of a transformers config (its text config for multimodal ones); None when it names
    none (the model has no fixed context)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in POSITION_KEYS:
        value = getattr(text, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return key, value
    return None


def load_config(name: str | None, config: dict[str, Any] | None) -> Any:
    """The config of a model given as a name/path or a config dict; None when it cannot be read here (loading the
    model itself then reports why, naming its key)."""
    from transformers import AutoConfig

    try:
        if config is not None:
            fields = dict(config)
            return AutoConfig.for_model(fields.pop("model_type"), **fields)
        return AutoConfig.from_pretrained(name) if name is not None else None
    except Exception:  # noqa: BLE001 - any failure here is reported by the model load, with its key
        return None


def model_contexts(module: Any) -> list[tuple[str, str, int]]:
    """(YAML key, config attribute, positions) for the policy and a separately named reference of ``module``."""
    policy_config = getattr(module, "model_config", None)
    sources = [
        ("model.model_config" if policy_config else "model.model", getattr(module, "model_name", None), policy_config),
        ("model.reference", getattr(module, "reference_name", None), None),
    ]
    found = []
    for key, name, config in sources:
        context = config_context(load_config(name, config)) if name is not None or config is not None else None
        if context is not None:
            found.append((key, *context))
    return found


def fit_to_model_context(datamodule: Any) -> None:
    """Lower ``datamodule.max_length`` to the smallest context of the attached module's models (one warning), and
    refuse prompt and padding settings that cannot fit it. Without a Trainer and module, nothing to check."""
    trainer = getattr(datamodule, "trainer", None)
    module = getattr(trainer, "lightning_module", None) if trainer is not None else None
    if module is None or not hasattr(datamodule, "max_length"):
        return
    contexts = model_contexts(module)
    if not contexts:
        return
    key, attribute, positions = min(contexts, key=lambda c: c[2])
    where = f"{key}'s {attribute}={positions}"
    if datamodule.max_length > positions:
        rank_zero_only(log.warning)(
            "data.max_length=%d is more than the model's context (%s): sequences are cut to %d tokens (set "
            "data.max_length <= %d to silence this)",
            datamodule.max_length, where, positions, positions,
        )  # fmt: skip
        datamodule.max_length = positions
    prompt = getattr(datamodule, "max_prompt_length", None)
    if prompt is not None and prompt >= datamodule.max_length:
        raise InputError(
            f"data.max_prompt_length={prompt} leaves no room for a response within the model's context ({where}); "
            f"set it below {datamodule.max_length}"
        )
    multiple = getattr(datamodule, "pad_to_multiple_of", None)
    if multiple is not None and math.ceil(datamodule.max_length / multiple) * multiple > positions:
        raise InputError(
            f"data.pad_to_multiple_of={multiple} pads sequences of up to data.max_length={datamodule.max_length} "
            f"tokens past the model's context ({where}); use a divisor of {positions} or a smaller max_length"
        )
