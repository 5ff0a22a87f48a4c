"""Validators for configuration values, shared by losses, robust strategies, the module and the DataModules.

Each raises a one-line ``ValueError`` that names the YAML key, so the CLI can report bad configuration where it
enters instead of a traceback from deep inside torch.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from typing import Any


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_positive(name: str, value: float) -> None:
    if not (_is_number(value) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_non_negative(name: str, value: float) -> None:
    if not (_is_number(value) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_choice(name: str, value: str, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")


def check_int_at_least(name: str, value: int, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
        suffix = " or null" if allow_none else ""
        raise ValueError(f"{name} must be an integer >= {minimum}{suffix}, got {value!r}")


def check_interval(name: str, value: float, low: float, high: float, *, open_low: bool, open_high: bool) -> None:
    """``value`` in the interval from ``low`` to ``high``, each end open or closed as asked."""
    inside = _is_number(value) and math.isfinite(value)
    inside = inside and (value > low if open_low else value >= low) and (value < high if open_high else value <= high)
    if not inside:
        bounds = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        raise ValueError(f"{name} must lie in {bounds}, got {value!r}")


def check_fraction(name: str, value: float) -> None:
    """A share strictly between 0 and 1 (e.g. a validation fraction: both parts must be non-empty)."""
    check_interval(name, value, 0.0, 1.0, open_low=True, open_high=True)


def check_probability(name: str, value: float, upper_open: bool = True) -> None:
    """A label-flip probability in [0, 0.5) (or [0, 0.5] when ``upper_open`` is False)."""
    check_interval(name, value, 0.0, 0.5, open_low=False, open_high=upper_open)


#: the ``torch_dtype`` names a configuration may give
DTYPES = ("bfloat16", "float16", "float32", "float64")


def resolve_dtype(name: str | None) -> Any:
    """The ``torch.dtype`` a configuration names (None stays None)."""
    if name is None:
        return None
    if name not in DTYPES:
        raise ValueError(f"model.torch_dtype must be one of {list(DTYPES)}, got {name!r}")
    import torch  # start-up: the CLI's error path imports this module and must not import torch

    return getattr(torch, name)


def looks_local(name_or_path: str) -> bool:
    """Whether a model name is meant as a local path (a Hub id is ``name`` or ``owner/name``)."""
    return name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1 or "\\" in name_or_path


def constructor_parameters(cls: Any) -> list[str]:
    """The keys a class takes in a configuration: its constructor's named parameters and, through ``**kwargs``,
    its bases' (as jsonargparse resolves them); parameters named ``_...`` are set by code, not by configuration."""
    names: list[str] = []
    for klass in inspect.getmro(cls) if inspect.isclass(cls) else [cls]:
        init = klass.__init__ if inspect.isclass(klass) else klass
        try:
            parameters = list(inspect.signature(init).parameters.values())
        except (TypeError, ValueError):
            break
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        names += [p.name for p in parameters if p.kind in kinds and p.name != "self" and not p.name.startswith("_")]
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return list(dict.fromkeys(names))
