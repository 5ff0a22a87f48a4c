"""Which ``-c`` file or flag gave a key its value, for the one-line errors about values stacked from several files.

A mutually exclusive pair (``data.train_alpha`` and ``data.train_mixtures``; MixtureDRO's ``radius`` and ``mixtures``)
is usually one value the user typed against one an earlier ``-c`` file set. The line then names each side's source,
read from the command line itself: the last ``-c`` file or flag that set the key (as jsonargparse applies them, in
order), so the user sees which one to clear with ``null``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

#: a key as the messages name it: ``data.train_alpha``, ``--model.robust.init_args.radius=null``
KEY = re.compile(r"(?<![\w.])-{0,2}((?:data|model|trainer)(?:\.[A-Za-z_]\w*)+)")


def normalized(key: str) -> str:
    """``data.init_args.train_alpha`` and ``data.train_alpha`` are one key."""
    return ".".join(part for part in key.split(".") if part != "init_args")


def _flatten(value: Any, prefix: str) -> Iterator[str]:
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            if key == "class_path":
                continue
            yield from _flatten(inner, prefix if key == "init_args" else f"{prefix}{key}.")
    elif prefix:
        yield prefix.rstrip(".")


def value_sources(argv: Sequence[str]) -> dict[str, str]:
    """key → the ``-c`` file (as typed) or ``--flag`` that set it last."""
    sources: dict[str, str] = {}
    arguments = list(argv)
    for i, argument in enumerate(arguments):
        path = None
        if argument in ("-c", "--config") and i + 1 < len(arguments):
            path = arguments[i + 1]
        elif argument.startswith("--config="):
            path = argument.split("=", 1)[1]
        if path is not None:
            try:
                loaded = yaml.safe_load(Path(path).read_text())
            except (OSError, yaml.YAMLError):
                continue
            for key in _flatten(loaded, ""):
                sources[normalized(key)] = path
        elif argument.startswith("--") and argument not in ("--config",) and not argument.startswith("--config="):
            flag = argument.split("=", 1)[0]
            sources[normalized(flag[2:])] = flag
    return sources


def with_sources(message: str, sources: dict[str, str]) -> str:
    """``message`` with, for each key it names that a file or flag set, where that value came from."""
    named: list[str] = []
    for match in KEY.finditer(message):
        key = normalized(match.group(1))
        if key in sources and key not in named:
            named.append(key)
    named = [key for key in named if not any(other.startswith(f"{key}.") for other in named)]  # the leaves only
    if not named:
        return message
    return message + " (" + "; ".join(f"{key} from {sources[key]}" for key in named) + ")"
