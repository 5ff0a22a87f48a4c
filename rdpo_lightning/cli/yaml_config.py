"""How ``rdpo`` reads YAML (config files and command-line values): jsonargparse's YAML loader, plus the paper's names
as class paths (:mod:`rdpo_lightning.cli.aliases`) and syntax errors that name the file, the line and the key above it.

Registered as jsonargparse's ``rdpo`` parser mode; :class:`~rdpo_lightning.cli.lightning_cli.RDPOCLI` parses in that
mode.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from jsonargparse import get_loader, set_loader

from rdpo_lightning.cli import aliases

MODE = "rdpo"
KEY_LINE = re.compile(r"^(\s*)(?:- )?([^\s#:'\"][^:#]*):(\s|$)")


class ConfigSyntaxError(yaml.YAMLError):
    """A YAML syntax error, described in one line for the user (the file, the line, the key it follows)."""


def key_before(text: str, line: int) -> str | None:
    """The dotted YAML key of the last key line before line ``line`` (1-based), from indentation alone."""
    stack: list[tuple[int, str]] = []
    for content in text.splitlines()[: line - 1]:
        match = KEY_LINE.match(content)
        if not match:
            continue
        indent = len(match.group(1)) + (2 if content.lstrip().startswith("- ") else 0)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2).strip()))
    return ".".join(key for _, key in stack) or None


def describe(error: yaml.YAMLError, text: str, path: str | None) -> str:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    problem = problem.replace(" in this context", " here")
    where = path or "a YAML value"
    if mark is None:
        return f"{where}: not valid YAML ({problem})"
    line = mark.line + 1
    after = key_before(text, line)
    hint = f", after {after}: check the indentation" if after else ""
    return f"{where}, line {line}: not valid YAML ({problem}){hint}"


def file_being_read(path: str | None) -> str | None:
    """The config file as the user named it (jsonargparse passes its base name only), else ``path``."""
    try:
        from jsonargparse._util import config_load_stack

        return config_load_stack.get()[-1][1] if path else None
    except (ImportError, IndexError):  # another jsonargparse version: the base name still says which file
        return path


def load(text: str, path: str | None = None) -> Any:
    """The YAML document ``text`` (read from ``path``, if a file) with aliases resolved."""
    try:
        value = get_loader("yaml")(text)
    except yaml.YAMLError as error:
        raise ConfigSyntaxError(describe(error, text, file_being_read(path))) from error
    return aliases.resolve_in(value)


set_loader(MODE, load, exceptions=(yaml.YAMLError,))
