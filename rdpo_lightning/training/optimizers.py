"""Building the configured optimizer: torch's fused Adam/AdamW on CUDA unless the user chose an implementation.

Left to itself torch runs Adam/AdamW on CUDA in its ``foreach`` form: several multi-tensor kernels per step over the
float32 state and a temporary the size of the moments (about 20-25 ms a step at 1.24 B parameters, issue 33). The
fused form does the same update in one kernel per device and dtype. So when ``model.optimizer`` is exactly
``torch.optim.AdamW`` or ``torch.optim.Adam``, sets neither ``fused`` nor ``foreach`` (nor ``differentiable``, which
fused refuses), every parameter it steps is on CUDA, and no GradScaler scales the loss (``16-mixed``: Lightning then
leaves the unscaling to a fused optimizer's ``step``, after the module has clipped, so it would clip scaled
gradients), the optimizer is rebuilt with ``fused=True`` and the same
groups, and the log says so once. A ``fused`` or ``foreach`` the user gave always wins (``fused: false`` keeps torch's
choice); other devices and optimizers are built exactly as configured.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

#: the optimizers fused by default on CUDA (exact classes: a subclass may change what ``step`` does)
FUSED_BY_DEFAULT = (torch.optim.AdamW, torch.optim.Adam)
#: settings that choose the implementation (torch's default for each is None): one set leaves the choice to the user
IMPLEMENTATION = ("fused", "foreach")


def parameter_devices(optimizer: torch.optim.Optimizer) -> set[str]:
    """The device types of the parameters ``optimizer`` steps (``cuda``, ``cpu``, ...)."""
    return {p.device.type for group in optimizer.param_groups for p in group["params"]}


def fused_by_default(optimizer: torch.optim.Optimizer, devices: set[str], loss_scaled: bool = False) -> bool:
    """Whether ``optimizer`` (as the user's factory built it) should run fused: a plain Adam/AdamW with no
    implementation chosen, all of whose parameters are on ``devices`` == {"cuda"}, its loss not ``loss_scaled``."""
    if type(optimizer) not in FUSED_BY_DEFAULT or devices != {"cuda"} or loss_scaled:
        return False
    chosen = any(group.get(key) is not None for group in optimizer.param_groups for key in IMPLEMENTATION)
    return not chosen and not any(group.get("differentiable") for group in optimizer.param_groups)


def build_optimizer(
    factory: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer],
    parameters: list[torch.nn.Parameter],
    loss_scaled: bool = False,
) -> torch.optim.Optimizer:
    """``factory(parameters)``, rebuilt fused where :func:`fused_by_default` says so (before any state exists:
    building an Adam allocates nothing, so the first build costs nothing to throw away)."""
    optimizer = factory(parameters)
    if not fused_by_default(optimizer, parameter_devices(optimizer), loss_scaled):
        return optimizer
    cls = type(optimizer)
    accepted = inspect.signature(cls).parameters  # defaults also hold derived keys (AdamW's decoupled_weight_decay)
    settings = {key: value for key, value in optimizer.defaults.items() if key in accepted}
    groups = [{**group, "fused": True, "foreach": None} for group in optimizer.param_groups]
    fused = cls(groups, **{**settings, "fused": True, "foreach": None})
    rank_zero_info(
        f"optimizer: {type(optimizer).__name__} runs fused on CUDA (one kernel a step; set"
        " model.optimizer.init_args.fused: false to keep torch's foreach form)"
    )
    return fused


def steps_where_fused_reads_them(optimizer: torch.optim.Optimizer) -> None:
    """Put each parameter's ``step`` on its parameter's device, in float32, in fused (or capturable) groups.

    torch's ``load_state_dict`` does this only when the *saved* groups were fused: a checkpoint of the foreach form
    leaves ``step`` on the CPU, where the fused kernel cannot read it, once the configured ``fused`` is put back."""
    for group in optimizer.param_groups:
        if not (group.get("fused") or group.get("capturable")):
            continue
        for param in group["params"]:
            state: dict[str, Any] = optimizer.state.get(param, {})
            step = state.get("step")
            if isinstance(step, torch.Tensor) and (step.device != param.device or step.dtype != torch.float32):
                state["step"] = step.to(dtype=torch.float32, device=param.device)
