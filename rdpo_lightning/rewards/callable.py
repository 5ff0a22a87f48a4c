"""A user's own Python function as the reward, named in YAML by its import path: a rule, a regex or an API client
scores completions without a RewardFunction subclass of its own."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rdpo_lightning.errors import InputError
from rdpo_lightning.rewards.base import RewardFunction


def _import_function(path: str) -> Callable:
    """The object at ``package.module:name`` or ``package.module.name``, imported where the config is read (not at
    the first score, mid-run); a path that leads to no callable is one line naming the key and the path."""
    where = f"CallableReward(function={path})"
    module_name, _, name = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not name:
        raise InputError(f"{where}: expected an import path 'package.module:name' or 'package.module.name'")
    try:
        found = importlib.import_module(module_name)
    except ImportError as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise InputError(f"{where}: cannot import {module_name} ({first})") from error
    for part in name.split("."):
        if not hasattr(found, part):
            raise InputError(f"{where}: {module_name} has no attribute {name}")
        found = getattr(found, part)
    if not callable(found):
        raise InputError(f"{where}: {name} is a {type(found).__name__}, not a function")
    return found


class CallableReward(RewardFunction):
    """Scores from ``function(texts) -> (n, K)`` (any array-like), or ``function(prompts, completions)`` with
    ``include_prompt``; its scores are checked like any reward's (shape, finiteness).

    Args:
        function: import path of the function, ``package.module:name`` or ``package.module.name`` (its module must
            be importable: installed, or on ``PYTHONPATH``).
        attributes: names of the K columns it returns, in order.
        include_prompt: the function reads the prompt too: it is called as ``function(prompts, completions)`` and
            scores only through ``score_completions`` (plain texts have no prompt to give it).
    """

    def __init__(self, function: str, attributes: list[str], include_prompt: bool = False) -> None:
        if not attributes:
            raise InputError(f"CallableReward(function={function}) needs attributes: the names of its score columns")
        if len(set(attributes)) != len(attributes):
            raise InputError(f"CallableReward(function={function}) attributes {list(attributes)} repeat a name")
        self.function = function
        self.include_prompt = include_prompt
        self._attributes = tuple(str(name) for name in attributes)
        self._function = _import_function(function)

    @property
    def attributes(self) -> tuple[str, ...]:
        return self._attributes

    def __repr__(self) -> str:
        return f"CallableReward(function={self.function})"

    def __call__(self, texts: Sequence[str]) -> Any:
        if self.include_prompt:
            raise InputError(
                f"{self!r} has include_prompt true: it scores completions with their prompts (score_completions), "
                "not texts alone"
            )
        return self._apply(list(texts))

    def completion_scores(self, prompts: list[str], completions: list[str]) -> Any:
        return self._apply(prompts, completions) if self.include_prompt else self._apply(completions)

    def _apply(self, *columns: list[str]) -> Any:
        if not columns[-1]:
            return np.zeros((0, len(self._attributes)))  # nothing to score: the user's function need not handle it
        return self._function(*columns)
