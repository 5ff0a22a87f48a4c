"""Validators for configuration values, shared by losses, robust strategies, the module and the DataModules.

Each raises a one-line ``ValueError`` that names the YAML key, so the CLI can report bad configuration where it
enters instead of a traceback from deep inside torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


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


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def resolve_dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    if name not in DTYPES:
        raise ValueError(f"model.torch_dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def looks_local(name_or_path: str) -> bool:
    """Whether a model name is meant as a local path (a Hub id is ``name`` or ``owner/name``)."""
    return name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1 or "\\" in name_or_path
