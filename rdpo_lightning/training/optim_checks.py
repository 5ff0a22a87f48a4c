"""The optimizer's hyper-parameters, checked where they enter (the module's construction), not at the first step.

``model.optimizer`` is a factory the module calls in ``configure_optimizers``, after the data are read and tokenised
and the models built; torch's own checks there are a traceback, and it lets some values through (an infinite
learning rate, a NaN ``eps``). So the factory is called once on a throwaway parameter when the module is built, and
the optimizer's defaults are checked: one line naming the YAML key.
"""

from __future__ import annotations

import math
import traceback
from typing import Any

import torch

from rdpo_lightning.checkpoints.run_record import class_path
from rdpo_lightning.errors import InputError

#: hyper-parameters that must be finite and >= 0 wherever an optimizer has them
NON_NEGATIVE = ("lr", "eps", "weight_decay", "momentum", "dampening", "alpha", "lr_decay", "initial_accumulator_value")


def _raising_optimizer(error: BaseException, factory: Any) -> str:
    """The optimizer class whose ``__init__`` raised ``error`` (the factory may be a wrapper, e.g. jsonargparse's)."""
    for frame, _ in traceback.walk_tb(error.__traceback__):
        owner = frame.f_locals.get("self")
        if frame.f_code.co_name == "__init__" and isinstance(owner, torch.optim.Optimizer):
            return class_path(type(owner))
    return getattr(factory, "__qualname__", type(factory).__qualname__)


def _number(value: Any) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


#: the hyper-parameter a torch range-check message is about
TORCH_MESSAGES = {
    "learning rate": "lr",
    "epsilon": "eps",
    "beta parameter at index 0": "betas[0]",
    "beta parameter at index 1": "betas[1]",
    "weight_decay": "weight_decay",
    "momentum": "momentum",
    "alpha": "alpha",
    "lr_decay": "lr_decay",
    "initial_accumulator_value": "initial_accumulator_value",
}


def _torch_key(key: str, message: str) -> str:
    for words, parameter in TORCH_MESSAGES.items():
        if message.startswith(f"Invalid {words}"):
            return f"{key}.init_args.{parameter}"
    return key


def check_optimizer(factory: Any, key: str = "model.optimizer") -> None:
    """Build the optimizer from ``factory`` on a throwaway parameter and check its hyper-parameters; raises an
    :class:`InputError` naming ``key.init_args.<name>``. A factory that cannot be built here for another reason (one
    that needs a device or a process group) is left to ``configure_optimizers``."""
    probe = torch.nn.Parameter(torch.zeros(1))
    try:
        optimizer = factory([probe])
    except ValueError as error:  # torch's own range checks ("Invalid learning rate: -0.1")
        raise InputError(f"{_torch_key(key, str(error))}: {error} ({_raising_optimizer(error, factory)})") from error
    except Exception:  # noqa: BLE001 - not a hyper-parameter problem: the real construction reports it
        return
    name = class_path(type(optimizer))
    for parameter, value in optimizer.defaults.items():
        where = f"{key}.init_args.{parameter}"
        if parameter == "betas" and isinstance(value, (tuple, list)):
            for i, beta in enumerate(value):
                number = _number(beta)
                if number is None or not (math.isfinite(number) and 0.0 <= number < 1.0):
                    raise InputError(f"{where}[{i}] must lie in [0, 1), got {beta!r} ({name})")
            continue
        number = _number(value)
        if number is None:
            continue
        if not math.isfinite(number):
            raise InputError(f"{where} must be finite, got {value!r} ({name})")
        if parameter in NON_NEGATIVE and number < 0:
            raise InputError(f"{where} must be >= 0, got {value!r} ({name})")
