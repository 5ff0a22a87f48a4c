"""The paper's names for the objectives, usable wherever a class path goes: ``--model.robust=KLDPO``,
``robust: WDPO`` or ``class_path: DPO`` in a YAML file.

An alias means a different class under ``model.robust`` (the strategy) and ``model.pair_loss`` (the per-pair loss):
``DPO`` is :class:`~rdpo_lightning.robust.NoRobust` as a strategy and :class:`~rdpo_lightning.losses.SigmoidLoss` as
a pair loss. Short class names (``KLReweighter``) need no alias: jsonargparse resolves them among the subclasses of the
key's type. Light on purpose (no torch import): the error messages of ``rdpo`` list these names too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: YAML key (its last part) -> alias -> the class path it stands for
ALIASES: dict[str, dict[str, str]] = {
    "robust": {
        "DPO": "rdpo_lightning.robust.NoRobust",
        "KLDPO": "rdpo_lightning.robust.KLReweighter",
        "WDPO": "rdpo_lightning.robust.WassersteinPenalty",
    },
    "pair_loss": {
        "DPO": "rdpo_lightning.losses.SigmoidLoss",
        "IPO": "rdpo_lightning.losses.IPOLoss",
        "rDPO": "rdpo_lightning.losses.RobustNoiseLoss",
        "RPO": "rdpo_lightning.losses.RPOLoss",
        "SimPO": "rdpo_lightning.losses.SimPOLoss",
    },
}


def resolve(key: str, name: Any) -> Any:
    """The class path an alias ``name`` stands for at ``key`` (``model.robust``, ``robust``, ...), else ``name``."""
    table = ALIASES.get(key.rsplit(".", 1)[-1], {})
    return table.get(name, name) if isinstance(name, str) else name


def resolve_in(value: Any, key: str = "") -> Any:
    """``value`` (a parsed YAML document or fragment) with every alias under a ``robust`` / ``pair_loss`` key replaced
    by its class path, in place of the name or of the ``class_path`` entry."""
    if isinstance(value, Mapping):
        resolved = {}
        for name, item in value.items():
            child = f"{key}.{name}" if key else str(name)
            if name == "class_path":
                resolved[name] = resolve(key, item)
            elif isinstance(item, str):
                resolved[name] = resolve(child, item)
            else:
                resolved[name] = resolve_in(item, child)
        return resolved
    if isinstance(value, list):
        return [resolve_in(item, key) for item in value]
    return value


def resolve_argv(argv: list[str]) -> list[str]:
    """Command-line arguments with aliases replaced: ``--model.robust=KLDPO``, ``--model.robust KLDPO`` and
    ``--model.robust.class_path=KLDPO``."""
    resolved = list(argv)
    for i, argument in enumerate(resolved):
        if not argument.startswith("--"):
            continue
        option, equals, value = argument[2:].partition("=")
        key = option.removesuffix(".class_path")
        if key.rsplit(".", 1)[-1] not in ALIASES:
            continue
        if equals:
            resolved[i] = f"--{option}={resolve(key, value)}"
        elif i + 1 < len(resolved):
            resolved[i + 1] = resolve(key, resolved[i + 1])
    return resolved


def names_of(class_path: str, key: str) -> list[str]:
    """The aliases that stand for ``class_path`` at ``key``."""
    table = ALIASES.get(key.rsplit(".", 1)[-1], {})
    return [alias for alias, path in table.items() if path == class_path]
