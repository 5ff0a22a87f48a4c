"""Adapter-only checkpoints of LoRA (PEFT) runs: the frozen base stays out, and the checkpoint says which base it needs.

A LoRA run's checkpoint held the whole frozen base (16-32 GB at 8 B parameters) beside megabytes of adapters. With
``model.adapter_only_checkpoints`` (see :func:`resolve` for the default), ``on_save_checkpoint`` drops the base
weights from the checkpoint's ``state_dict`` (:func:`strip_base`): file and FSDP2 distributed checkpoints alike,
since both write what that dict holds (under FSDP2 every rank its own shards of the adapters). The run record gets a
``base`` entry: the base's ``model.model`` and the digest of its weights
(:func:`~rdpo_lightning.models.digest.weights_digest` over :func:`~rdpo_lightning.models.adapters.base_state`: for fresh
adapters the very digest the reference cache keys the reference by).

Restoring, the run builds its base from ``model.model`` as every run does; :meth:`AdapterCheckpoints.on_load`
refuses a checkpoint whose recorded base digest differs (one line; a digest recorded before tied storages were
hashed once is accepted: :func:`~rdpo_lightning.models.digest.digest_matches`) and puts this run's base weights back
into the loaded state dict, so Lightning's strict loading still checks every adapter weight: only the base keys are
taken from the run rather than from the file. An FSDP2 distributed checkpoint is loaded by the strategy before any hook
runs: :func:`load_adapter_only_distributed` (called by :class:`~rdpo_lightning.training.FSDP2Strategy`) reads
the keys the checkpoint holds, every rank its own shards, and leaves the base as the run built it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rdpo_lightning.checkpoints.run_record import KEY
from rdpo_lightning.errors import InputError
from rdpo_lightning.models.adapters import TRAINED_ADAPTER, adapter_names, base_state, is_adapter_key
from rdpo_lightning.models.digest import digest_matches, weights_digest

#: the run record's entry (``checkpoint["rdpo"]["base"]``)
BASE = "base"
POLICY_PREFIX = "policy."
#: where Lightning's distributed checkpoints keep the module's state dict, and the rest of the checkpoint
DCP_STATE, DCP_METADATA = "state_dict", "meta.pt"


def unsupported_reason(strategy: Any) -> str | None:
    """Why adapter-only checkpoints cannot run under ``strategy`` (None: they can).

    Tested are the strategies that call ``on_load_checkpoint`` before loading the module's weights (single device,
    DDP) and FSDP2Strategy's distributed checkpoints, which it loads itself; FSDP1, DeepSpeed and a plain
    ``ModelParallelStrategy`` load weights inside the strategy, where the missing base keys would fail.
    """
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy

    own = getattr(strategy, "adapter_only_refusal", None)  # a strategy that loads them itself says when it cannot
    if callable(own):
        return own()
    if isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)) and not isinstance(strategy, DeepSpeedStrategy):
        return None
    return f"{type(strategy).__name__} loads checkpoint weights itself (supported: single device, DDP, FSDP2Strategy)"


def resolve(setting: bool | None, adapted: bool, model_name: str | None, strategy: Any) -> bool:
    """Whether this run writes adapter-only checkpoints.

    ``None`` (the default) means yes for a LoRA run whose base is ``model.model`` under a strategy that supports it:
    resuming and exporting re-read that base, as PEFT and TRL do. Not for a base built from ``model.model_config``
    (random weights that exist in no file, so an export would have no base to put the adapters on) and not where
    :func:`unsupported_reason` says no. ``True`` where it cannot work is refused with one line.
    """
    if setting is False:
        return False
    reason = unsupported_reason(strategy)
    if setting is None:
        return adapted and model_name is not None and reason is None
    if not adapted:
        raise InputError("model.adapter_only_checkpoints: true needs adapters (model.peft or model.adapter)")
    if reason is not None:
        raise InputError(f"model.adapter_only_checkpoints: true cannot run here: {reason}")
    return True


def base_keys(keys: list[str], policy: nn.Module) -> list[str]:
    """The LightningModule state-dict keys among ``keys`` that hold the policy's frozen base (not an adapter's, nor
    any trainable weight)."""
    names = adapter_names(policy)
    trainable = {POLICY_PREFIX + name for name, p in policy.named_parameters() if p.requires_grad}
    return [k for k in keys if k.startswith(POLICY_PREFIX) and not is_adapter_key(k, names) and k not in trainable]


def strip_base(checkpoint: dict[str, Any], policy: nn.Module) -> int:
    """Drop the base weights from ``checkpoint["state_dict"]``; returns how many entries went."""
    state = checkpoint["state_dict"]
    dropped = base_keys(list(state), policy)
    for key in dropped:
        del state[key]
    return len(dropped)


def recorded_base(record: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``base`` entry of a run record (empty for checkpoints from before it existed)."""
    return dict((record or {}).get(BASE) or {})


def is_adapter_only(record: Mapping[str, Any] | None) -> bool:
    return bool(recorded_base(record).get("adapter_only"))


def describe(base: Mapping[str, Any]) -> str:
    name = base.get("model")
    where = name if name is not None else "built from model.model_config"
    return f"{where} (weights digest {str(base.get('digest'))[:12]})"


class AdapterCheckpoints:
    """The module's view of adapter-only checkpoints: which base it runs on, what it saves, what it accepts back.

    Args:
        setting: ``model.adapter_only_checkpoints`` (None: automatic, see :func:`resolve`).
    """

    def __init__(self, setting: bool | None) -> None:
        self.setting = setting
        self.enabled = False
        self.model_name: str | None = None
        self.digest: str | None = None

    def setup(self, strategy: Any, adapted: bool, model_name: str | None) -> None:
        self.enabled = resolve(self.setting, adapted, model_name, strategy)
        self.model_name = model_name

    def note_base(self, policy: nn.Module) -> None:
        """Digest the base of an adapted ``policy`` (call before it is sharded: every rank holds all of it then)."""

        self.digest = weights_digest(base_state(policy)) if adapter_names(policy) else None

    def reference_digest(self, policy: nn.Module) -> str | None:
        """The base digest where it is also the reference's (fresh adapters: the reference is the bare base), else
        None; the reference cache then need not hash the base a second time."""
        if self.digest is None or adapter_names(policy) != {TRAINED_ADAPTER}:
            return None
        return self.digest

    def on_save(self, checkpoint: dict[str, Any], record: dict[str, Any], policy: nn.Module) -> None:
        """Record the base in ``record`` and, when enabled, leave it out of the checkpoint."""
        if self.digest is None:
            return
        record[BASE] = {"model": self.model_name, "digest": self.digest, "adapter_only": self.enabled}
        if self.enabled and "state_dict" in checkpoint:
            strip_base(checkpoint, policy)

    def on_load(self, checkpoint: dict[str, Any], record: Mapping[str, Any] | None, module: nn.Module) -> None:
        """Refuse an adapter-only checkpoint of another base (or for a run without adapters) in one line; put this
        run's base weights into its ``state_dict`` (when it has one: FSDP2 loads its weights in the strategy)."""
        if not is_adapter_only(record):
            return
        saved = recorded_base(record)
        if self.digest is None:
            raise InputError(
                f"the checkpoint holds LoRA adapters only, for the base {describe(saved)}; this run has no adapters"
                " (model.peft / model.adapter unset): resume with the checkpoint's configuration"
            )
        if not digest_matches(saved.get("digest"), self.digest, lambda: base_state(module.policy)):
            mine = describe({"model": self.model_name, "digest": self.digest})
            raise InputError(
                f"the checkpoint holds LoRA adapters only, trained on the base {describe(saved)}; this run's base"
                f" {mine} has other weights: set model.model to the checkpoint's base"
            )
        state = checkpoint.get("state_dict")
        if state is None:
            return
        current = module.state_dict()
        for key in base_keys(list(current), module.policy):
            state.setdefault(key, current[key])


def load_adapter_only_distributed(
    module: nn.Module, optimizers: list[torch.optim.Optimizer], path: Path, weights_only: bool | None
) -> dict[str, Any] | None:
    """Restore an adapter-only FSDP2 distributed checkpoint into the sharded ``module`` (every rank its own shards of
    what the checkpoint holds; the base stays as the run built it) and the optimizers; returns the checkpoint's other
    contents as Lightning's loader does. None when ``path`` is no adapter-only distributed checkpoint."""
    from torch.distributed.checkpoint import FileSystemReader, load
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    if not (path.is_dir() and (path / DCP_METADATA).is_file()):
        return None
    metadata = torch.load(path / DCP_METADATA, weights_only=weights_only)
    if not is_adapter_only(metadata.get(KEY)):
        return None
    stored = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    state = get_model_state_dict(module)
    present = {k: v for k, v in state.items() if f"{DCP_STATE}.{k}" in stored}
    absent = [k for k in state if k not in present]
    expected = set(base_keys(absent, module.policy))
    if set(absent) != expected:
        missing = sorted(set(absent) - expected)
        raise InputError(f"the adapter-only checkpoint {path} lacks weights this run trains: {missing[:3]}")
    load({DCP_STATE: present}, checkpoint_id=path)
    module.load_state_dict(present, strict=False)
    options = StateDictOptions(cpu_offload=True)
    for index, optimizer in enumerate(optimizers):
        key = f"optimizer_{index}"
        optimizer_state = {key: get_optimizer_state_dict(module, optimizer)}
        load(optimizer_state, checkpoint_id=path)
        set_optimizer_state_dict(module, optimizer, optim_state_dict=optimizer_state[key], options=options)
    return metadata
