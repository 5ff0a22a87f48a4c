"""What a checkpoint records about its run, so that ``rdpo export`` needs nothing but the checkpoint.

Stored under ``checkpoint["rdpo"]`` by :meth:`RobustDPO.on_save_checkpoint`: the policy's model config and adapter
config (to rebuild the model without its original files), the tokenizer's files (with the chat template), the
objective (robust strategy, pair loss, β), the strategy and trainer settings, the DataModule's mixtures, the
validation metrics of the pass the checkpoint follows, and the run's YAML configuration when ``rdpo`` started it. A
LoRA run adds its base (``model.model`` and a digest of its weights, and whether the checkpoint leaves it out:
:mod:`rdpo_lightning.checkpoints.adapter_only`).
"""

from __future__ import annotations

import json
import tempfile
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from rdpo_lightning.checks import constructor_parameters
from rdpo_lightning.models.dropout import recorded_config

FORMAT = 1
KEY = "rdpo"
#: longest recorded DataModule argument (JSON characters)
MAX_CHARS = 240


#: the types a checkpoint may hold for ``torch.load(weights_only=True)``, which a resume uses, to read it back
_SCALARS = (bool, int, float, str)


def plain(value: Any) -> Any:
    """``value`` in built-in types alone (recursively; anything else as its ``repr``): records survive any loader,
    ``weights_only=True`` included, and any reader. An Enum becomes its value: a ``str`` Enum passes ``json.dumps``
    but pickles as its class, which ``weights_only`` refuses (QLoRA's ``quant_method`` did, stopping its resume)."""
    if isinstance(value, Enum):
        return plain(value.value)
    if isinstance(value, np.generic):  # a numpy scalar (np.int64 is no int)
        return plain(value.item())
    if value is None:
        return None
    for kind in _SCALARS:
        if isinstance(value, kind):
            return kind(value)  # a subclass of a built-in type (a str subclass, numpy's float64) as that type
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k if k is None or type(k) in _SCALARS else str(k): plain(v) for k, v in value.items()}
    return repr(value)


def class_path(kind: type) -> str:
    """``module.QualifiedName`` of a class: how YAMLs, run records and messages name it."""
    return f"{kind.__module__}.{kind.__qualname__}"


def init_args(obj: Any) -> dict[str, Any]:
    """``class_path`` and the constructor arguments an object still holds as attributes of the same name."""
    arguments = {}
    for name in constructor_parameters(type(obj)):
        for attribute in (name, f"_{name}"):
            if hasattr(obj, attribute) and not callable(getattr(obj, attribute)):
                arguments[name] = plain(getattr(obj, attribute))
                break
    return {"class_path": class_path(type(obj)), "init_args": arguments}


def tokenizer_files(tokenizer: Any) -> dict[str, bytes]:
    """The files ``tokenizer.save_pretrained`` writes (tokenizer, special tokens, chat template)."""
    if tokenizer is None:
        return {}
    with tempfile.TemporaryDirectory() as directory:
        tokenizer.save_pretrained(directory)
        return {p.name: p.read_bytes() for p in Path(directory).iterdir() if p.is_file()}


def validation_record(trainer: Any) -> dict[str, Any] | None:
    """Per-mixture and worst-case metrics of the latest validation pass, from the first callback that keeps them
    (:class:`~rdpo_lightning.callbacks.WorstCaseEvaluation` does). Callbacks sit above the module in the layers, so
    the record asks them through this method rather than importing their class."""
    for callback in getattr(trainer, "callbacks", []):
        record = getattr(callback, "validation_record", None)
        value = record() if callable(record) else None
        if value is not None:
            return value
    return None


def data_record(datamodule: Any) -> dict[str, Any] | None:
    """The DataModule's class and arguments (which fix the training and validation mixtures) and its validation
    sets' names."""
    if datamodule is None:
        return None
    record = init_args(datamodule)
    # long values (a whole world description, a sampling config) would drown the model card; the YAML keeps them
    record["init_args"] = {k: v for k, v in record["init_args"].items() if len(json.dumps(v)) <= MAX_CHARS}
    record["validation_sets"] = list(getattr(datamodule, "val_names", None) or [])
    return record


def strategy_record(trainer: Any) -> dict[str, Any]:
    strategy = trainer.strategy
    return {
        "class": type(strategy).__name__,
        "precision": str(trainer.precision),
        "world_size": trainer.world_size,
        "num_nodes": trainer.num_nodes,
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
    }


def optimizer_record(trainer: Any) -> dict[str, Any] | None:
    """The optimizer's class: a resume refuses another (its state would not fit)."""
    optimizers = getattr(trainer, "optimizers", None) or []
    if not optimizers:
        return None
    return {"class": class_path(type(optimizers[0]))}


def run_record(module: Any, policy: nn.Module, adapter_config: dict[str, Any] | None) -> dict[str, Any]:
    """Everything :func:`~rdpo_lightning.checkpoints.export.export_checkpoint` and the model card read (see the module
    docstring)."""
    trainer = module._trainer
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    config = getattr(policy, "config", None)
    generation = getattr(policy, "generation_config", None)
    return {
        "format": FORMAT,
        "model_config": plain(recorded_config(policy)) if config is not None else None,
        "generation_config": plain(generation.to_dict()) if generation is not None else None,
        "adapter_config": adapter_config,
        "tokenizer_files": tokenizer_files(getattr(datamodule, "tokenizer", None)),
        "objective": {
            "beta": module.beta,
            "robust": init_args(module.robust),
            "pair_loss": init_args(module.pair_loss),
        },
        "strategy": strategy_record(trainer) if trainer is not None else None,
        "optimizer": optimizer_record(trainer) if trainer is not None else None,
        "data": data_record(datamodule),
        "validation": validation_record(trainer) if trainer is not None else None,
        "global_step": trainer.global_step if trainer is not None else None,
        "config_yaml": getattr(module, "run_config_yaml", None),
    }
