"""LoRA (and other PEFT) adapters on the policy, and the reference they imply without a second model.

``model.peft`` (a PEFT config chosen by ``class_path``, e.g. ``peft.LoraConfig``) wraps the loaded policy in fresh
adapters; ``model.adapter`` (a directory written by ``save_pretrained``) continues training an existing one. Either
way the base weights are frozen and only the adapter weights train.

The reference is the policy *as it started*, computed by the same model in :func:`reference_mode`:

* fresh adapters: the base model, i.e. the policy with its adapters disabled (PEFT's LoRA starts with B = 0, so the
  initial policy and the base model agree);
* a continued adapter: the base model with the *starting* adapter, kept as a second, frozen adapter named
  ``reference`` (as TRL does with ``ref_adapter_name``). So the KL anchor of DPO stays where training began, not at
  the bare base model, and a continued run optimises the same objective as one that never stopped.

:func:`reference_state` lists exactly the weights that reference depends on (base weights plus the starting adapter,
not the trainable adapter), under the names the bare base model has: the reference log-prob cache is keyed by it, so
a cache computed from the base model is reused by a LoRA run on that base, and never for another reference.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rdpo_lightning.errors import InputError

#: the frozen copy of a continued adapter, which computes the reference
REFERENCE_ADAPTER = "reference"
#: the adapter that trains
TRAINED_ADAPTER = "default"


def is_adapted(model: nn.Module) -> bool:
    """Whether ``model`` is a PEFT model (adapters on a frozen base)."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


def as_peft_config(config: Any) -> Any:
    """A PEFT config from an instance or its ``to_dict()`` (how it is stored in a checkpoint's hyperparameters)."""
    if config is None or not isinstance(config, dict):
        return config
    from peft import get_peft_config

    config = dict(config)
    config.pop("runtime_config", None)
    try:
        return get_peft_config(config)
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(
            f"model.peft: not a PEFT config ({type(error).__name__}: {error}); give class_path: peft.LoraConfig with"
            " init_args, or a PEFT config's to_dict() (with its peft_type)"
        ) from error


def peft_config_dict(config: Any) -> dict[str, Any] | None:
    """JSON-safe form of a PEFT config (sets become sorted lists) for checkpoints and model cards."""
    config = as_peft_config(config)
    if config is None:
        return None
    return json.loads(
        json.dumps(config.to_dict(), default=lambda value: sorted(value) if isinstance(value, set) else str(value))
    )


def attach_adapters(model: nn.Module, peft_config: Any = None, adapter: str | None = None) -> nn.Module:
    """``model`` wrapped in fresh adapters (``peft_config``) or in the saved adapter ``adapter`` (continued: trainable,
    plus a frozen copy named ``reference``); ``model`` itself when neither is given."""
    if peft_config is None and adapter is None:
        return model
    if peft_config is not None and adapter is not None:
        raise InputError(
            "give one of model.peft (fresh adapters) and model.adapter (continue a saved adapter, with its own config)"
        )
    if getattr(model, "is_quantized", False):  # QLoRA: norms in float32, inputs that carry gradients
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if adapter is not None:
        return _continue_adapter(model, adapter)
    from peft import get_peft_model

    config = as_peft_config(peft_config)
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        first = str(error).strip().splitlines()[0]
        if "target" in first.lower():
            names = linear_layer_names(model)
            raise InputError(
                f"model.peft.target_modules: {first} (linear layers of {type(model).__name__}: {names};"
                " or 'all-linear')"
            ) from error
        raise InputError(f"model.peft: {first}") from error


def linear_layer_names(model: nn.Module) -> list[str]:
    """The short names of ``model``'s linear layers (what ``target_modules`` may list)."""
    from transformers.pytorch_utils import Conv1D

    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))})


def _continue_adapter(model: nn.Module, adapter: str) -> nn.Module:
    from peft import PeftModel

    directory = Path(adapter).expanduser()
    if not (directory / "adapter_config.json").is_file():
        what = "has no adapter_config.json" if directory.is_dir() else "does not exist"
        raise InputError(f"model.adapter={adapter}: {what} (expected a directory written by PEFT's save_pretrained)")
    try:
        model = PeftModel.from_pretrained(model, str(directory), adapter_name=TRAINED_ADAPTER, is_trainable=True)
        model.load_adapter(str(directory), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
    except (ValueError, RuntimeError, KeyError) as error:
        first = str(error).strip().splitlines()[0]
        raise InputError(
            f"model.adapter={adapter} does not fit model.model ({type(model).__name__}): {first}"
        ) from error
    model.set_adapter(TRAINED_ADAPTER)  # trainable; the reference adapter stays frozen
    return model


def _tuner_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    return [m for m in model.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]


def _available_adapters(layer: nn.Module) -> set[str]:
    found = getattr(layer, "_get_available_adapters", None)
    if found is not None:
        return set(found())
    return set(getattr(layer, "_adapters", ()))


@contextlib.contextmanager
def reference_mode(model: nn.Module) -> Iterator[None]:
    """Inside, the adapted ``model`` computes the reference (see the module docstring); other models are unchanged.

    Only the layers' active-adapter flags change, never ``requires_grad`` (PEFT's ``disable_adapter`` re-marks
    adapter weights trainable on exit, which a sharded model must not see mid-step).
    """
    layers = _tuner_layers(model)
    saved = [(layer, layer._disable_adapters, layer._active_adapter) for layer in layers]
    try:
        for layer in layers:
            if REFERENCE_ADAPTER in _available_adapters(layer):
                layer._active_adapter = [REFERENCE_ADAPTER]
            else:
                layer._disable_adapters = True
        yield
    finally:
        for layer, disabled, active in saved:
            layer._disable_adapters, layer._active_adapter = disabled, active


def adapter_names(model: nn.Module) -> set[str]:
    """The names of the adapters on ``model`` (``default``, and ``reference`` for a continued adapter); empty for a
    model without adapters."""
    return set(getattr(model, "peft_config", {}) or {}) if is_adapted(model) else set()


def is_adapter_key(key: str, names: set[str]) -> bool:
    """Whether a state-dict key of an adapted model names an adapter's weight (one of its segments is an adapter
    name, as in ``...c_attn.lora_A.default.weight`` or ``...ln_f.modules_to_save.default.weight``), not the base's."""
    return any(part in names for part in key.split("."))


def _bare_name(key: str) -> str:
    """A PEFT model's state-dict key as the bare base model names it (wrapper prefixes and segments removed)."""
    kept = [p for p in key.split(".") if p not in ("base_layer", "original_module")]
    if kept[:2] == ["base_model", "model"]:
        kept = kept[2:]
    return ".".join(kept)


def reference_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights the reference depends on, named as in the bare base model (a starting adapter's under its own
    names): the trained adapter's weights are left out, PEFT's wrapper prefixes removed."""
    if not is_adapted(model):
        return dict(model.state_dict())
    return {_bare_name(k): v for k, v in model.state_dict().items() if not is_adapter_key(k, {TRAINED_ADAPTER})}


def base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The frozen base model's weights under their bare names, no adapter's (neither the trained nor a starting one):
    what an adapter-only checkpoint leaves out, and whose digest says which base it needs."""
    names = adapter_names(model)
    return {_bare_name(k): v for k, v in model.state_dict().items() if not is_adapter_key(k, names)}


def trainable_summary(model: nn.Module) -> str:
    """``trainable / total parameters (percent)``, for the log."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / max(total, 1):.2f}%)"
