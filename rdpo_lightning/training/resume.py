"""A resume keeps what the user typed: configured values win over the checkpoint's, and say so in one line each.

A checkpoint restores the policy's weights, the optimizer's state and the loops' counters; everything else comes from
this run's configuration (``rdpo_lightning.cli`` lets the checkpoint's hyper-parameters fill only the keys the
command line and ``-c`` files did not give). Two things would still silently undo a typed value, and one would fail
deep inside torch; :class:`ResumeCheck` handles them:

* **differences are said**: each ``model.*`` hyper-parameter, robust-strategy or pair-loss argument that differs from
  the checkpoint's is named with both values (``resuming with model.beta = 0.2 (the checkpoint has 0.1)``);
* **changes that cannot work are refused** with one :class:`~rdpo_lightning.errors.InputError` naming the key: a
  weight the checkpoint holds in another shape or not at all (the architecture, ``model.model_config``, another base
  in ``model.model``), the adapter's type, rank or targets (``model.peft``), and the optimizer's class;
* **the optimizer's hyper-parameters are the configured ones**: ``Optimizer.load_state_dict`` restores the
  checkpoint's learning rate, weight decay and betas into the param groups, and the scheduler restores its base
  learning rates, so after the restore :meth:`ResumeCheck.after_restore` puts the configured values back (the
  learning rate at the schedule's current step).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from rdpo_lightning.checkpoints.run_record import class_path
from rdpo_lightning.errors import InputError
from rdpo_lightning.training.optimizers import steps_where_fused_reads_them

#: adapter settings a resumed adapter's weights depend on: a change cannot be loaded
FIXED_ADAPTER_KEYS = ("peft_type", "r", "target_modules", "modules_to_save", "use_dora", "layers_to_transform")
#: hyper-parameters that are not a user's setting (their differences are noise): Lightning's bookkeeping, and what
#: PEFT writes into its config by itself (its version, the base's name, its inference flag)
LIGHTNING_BOOKKEEPING = ("_instantiator", "_class_path")
#: the hyper-parameters compared key by key, and the keys of each not compared
NESTED = {
    "peft": {"peft_version", "base_model_name_or_path", "inference_mode", "runtime_config", "revision"},
    "model_config": set(),
}
#: the run record's entry for the optimizer (its class)
OPTIMIZER = "optimizer"
#: param-group keys that are not hyper-parameters (``initial_lr`` is the scheduler's base learning rate)
GROUP_BOOKKEEPING = ("params", "initial_lr", "lr")


def hyperparameter_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, checkpoint's value, this run's value) for every ``model.*`` hyper-parameter that differs."""
    changes = []
    for key in sorted(set(saved) | set(current)):
        if key in LIGHTNING_BOOKKEEPING:
            continue
        before, after = saved.get(key), current.get(key)
        if key in NESTED and isinstance(before, dict) and isinstance(after, dict):
            changes += [
                (f"{key}.{k}", b, a) for k, b, a in hyperparameter_changes(before, after) if k not in NESTED[key]
            ]
        elif _normal(before) != _normal(after):
            changes.append((key, before, after))
    return changes


def _normal(value: Any) -> Any:
    """Lists and sets compare as sorted lists; tuples as lists (a YAML list and a stored tuple are one setting)."""
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, (tuple, list)):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    return value


def objective_changes(saved: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """The robust strategy's and pair loss's ``class_path`` and arguments that differ from the run record's."""
    if not saved:
        return []
    changes = []
    for part in ("robust", "pair_loss"):
        before, after = saved.get(part) or {}, current.get(part) or {}
        if before.get("class_path") != after.get("class_path"):
            changes.append((part, before.get("class_path"), after.get("class_path")))
            continue
        args_before, args_after = before.get("init_args") or {}, after.get("init_args") or {}
        for key in sorted(set(args_before) | set(args_after)):
            if _normal(args_before.get(key)) != _normal(args_after.get(key)):
                changes.append((f"{part}.{key}", args_before.get(key), args_after.get(key)))
    return changes


def refused_adapter_change(changes: list[tuple[str, Any, Any]]) -> str | None:
    for key, before, after in changes:
        if key.startswith("peft.") and key.removeprefix("peft.") in FIXED_ADAPTER_KEYS:
            return (
                f"model.{key}: {after!r} cannot resume a checkpoint whose adapters were trained with {before!r}"
                " (the adapter weights would not fit); resume with the checkpoint's value, or start a new fit"
            )
    if any(key == "peft" and (before is None) != (after is None) for key, before, after in changes):
        return "model.peft: adapters cannot be added to or removed from a resumed run; resume with the checkpoint's"
    return None


def state_mismatch(saved: Mapping[str, Any], module_state: Mapping[str, torch.Tensor]) -> tuple[str, str] | None:
    """(first prefix, what is wrong) when the checkpoint's weights do not fit the module's: a key only one side has,
    or another shape."""
    for name, tensor in module_state.items():
        stored = saved.get(name)
        if stored is None:
            return name, f"{name} is not in the checkpoint"
        if isinstance(stored, torch.Tensor) and tuple(stored.shape) != tuple(tensor.shape):
            return name, f"{name} has shape {tuple(stored.shape)} in the checkpoint, {tuple(tensor.shape)} here"
    for name in saved:
        if name not in module_state:
            return name, f"the checkpoint's {name} has no place in this model"
    return None


def owner_key(weight: str, changes: list[tuple[str, Any, Any]]) -> str:
    """The YAML key to name for a weight that does not fit: what changed about the part it belongs to."""
    if weight.startswith("robust."):
        return "model.robust"
    if weight.startswith("pair_loss."):
        return "model.pair_loss"
    changed = {key.split(".", 1)[0] for key, _, _ in changes}
    for key in ("model_config", "peft", "adapter", "model"):
        if key in changed:
            return f"model.{key}"
    return "model.model"


class ResumeCheck:
    """What a resumed fit compares with its checkpoint (see the module docstring); one per module."""

    def __init__(self) -> None:
        self._saved_groups: list[dict[str, Any]] | None = None
        self._saved_optimizer: str | None = None
        self._configured: list[dict[str, Any]] | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self.resumed = False

    # --- the checkpoint and the module ------------------------------------------------------------------------
    def checkpoint_loaded(
        self,
        checkpoint: Mapping[str, Any],
        record: Mapping[str, Any] | None,
        hparams: Mapping[str, Any],
        objective: Mapping[str, Any],
        module_state: Mapping[str, torch.Tensor] | None,
    ) -> None:
        """Say every difference, refuse what cannot load (``module_state``: the module's weights, for a checkpoint that
        holds a ``state_dict``); remember the optimizer's saved groups and class."""
        self.resumed = True
        changes = hyperparameter_changes(checkpoint.get("hyper_parameters") or {}, hparams)
        changes += objective_changes((record or {}).get("objective"), objective)
        refusal = refused_adapter_change(changes)
        if refusal is not None:
            raise InputError(refusal)
        if module_state is not None:
            mismatch = state_mismatch(checkpoint["state_dict"], module_state)
            if mismatch is not None:
                weight, problem = mismatch
                raise InputError(
                    f"{owner_key(weight, changes)}: the checkpoint's weights do not fit this run's model ({problem});"
                    " resume with the configuration the checkpoint was trained with"
                )
        for key, before, after in changes:
            rank_zero_info(f"resuming with model.{key} = {after!r} (the checkpoint has {before!r})")
        optimizers = checkpoint.get("optimizer_states") or []
        if optimizers and isinstance(optimizers[0], Mapping) and "param_groups" in optimizers[0]:
            self._saved_groups = [dict(group) for group in optimizers[0]["param_groups"]]
        self._saved_optimizer = ((record or {}).get(OPTIMIZER) or {}).get("class")
        self._check_optimizer_class()

    # --- the optimizer ----------------------------------------------------------------------------------------
    def optimizer_built(self, optimizer: torch.optim.Optimizer) -> None:
        """The configured optimizer, before the scheduler or a checkpoint touches its groups."""
        self._optimizer = optimizer
        self._configured = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        self._check_optimizer_class()

    def _check_optimizer_class(self) -> None:
        """Once both the checkpoint and the optimizer are known (either comes first, by strategy)."""
        if self._optimizer is None or not self.resumed:
            return
        configured = class_path(type(self._optimizer))
        if self._saved_optimizer is not None and self._saved_optimizer != configured:
            raise InputError(
                f"optimizer: {configured} cannot resume the state of {self._saved_optimizer} the checkpoint was"
                " trained with; resume with its class_path, or start a new fit"
            )
        if self._saved_optimizer is None and self._saved_groups:  # a checkpoint from before the record said it
            saved = set(self._saved_groups[0]) - set(GROUP_BOOKKEEPING)
            built = set(self._configured[0]) - set(GROUP_BOOKKEEPING)
            if saved != built:
                raise InputError(
                    f"optimizer: {configured} cannot resume the checkpoint's optimizer state (its settings"
                    f" {sorted(saved - built)} are not {configured}'s); resume with the optimizer it was trained with"
                )

    def after_restore(self, optimizer: torch.optim.Optimizer, scheduler: Any | None) -> None:
        """Put the configured hyper-parameters back where the checkpoint's were restored (one line each)."""
        if not self.resumed or self._configured is None or optimizer is not self._optimizer:
            return
        for index, (group, configured) in enumerate(zip(optimizer.param_groups, self._configured, strict=True)):
            for key, value in configured.items():
                if key in GROUP_BOOKKEEPING or _normal(group.get(key)) == _normal(value):
                    continue
                rank_zero_info(f"resuming with optimizer.{key} = {value!r} (the checkpoint has {group.get(key)!r})")
                group[key] = value
            self._restore_learning_rate(index, group, configured["lr"], scheduler)
        steps_where_fused_reads_them(optimizer)  # a foreach checkpoint resumed by a fused optimizer (CUDA default)

    @staticmethod
    def _restore_learning_rate(index: int, group: dict[str, Any], lr: float, scheduler: Any | None) -> None:
        """The configured base learning rate, and the learning rate of the *configured* schedule at the restored
        step (the restored one is the checkpoint's schedule's: another ``max_steps`` changes it)."""
        lambdas = getattr(scheduler, "lr_lambdas", None)
        base = group.get("initial_lr", group["lr"]) if lambdas is not None else group["lr"]
        if base != lr:
            rank_zero_info(f"resuming with optimizer.lr = {lr!r} (the checkpoint has {base!r})")
        if lambdas is None:
            group["lr"] = lr
            return
        group["initial_lr"] = lr
        scheduler.base_lrs[index] = lr
        group["lr"] = lr * lambdas[index](scheduler.last_epoch)  # as LambdaLR computes it
        scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]
