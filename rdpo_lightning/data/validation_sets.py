"""Named validation sets for pairwise data: the in-distribution held-out set, one set per group, shifted files.

A worst case needs more than one set. :class:`~rdpo_lightning.data.PairwisePreferenceDataModule` serves, in order:

1. the in-distribution set (``data.val_name``, default ``held_out``): ``data.val_split`` of the source, or
   ``data.val_fraction`` of the training rows (stratified by group when the sets below are asked for);
2. with ``data.group_column`` (and ``data.val_per_group``, default true), that set cut by group: ``group=<value>``,
   one set per value (numbers in numeric order, then names sorted); together they hold exactly its pairs;
3. the sets of ``data.val_path``: a path, a list of paths (each named by its file stem) or a mapping name → path.

The in-distribution set stays beside the ``val_path`` sets; ``data.val_fraction: 0`` (with no ``val_split``) drops it
(and its groups' sets): the first ``val_path`` set is then the in-distribution one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np

from rdpo_lightning.checks import check_interval
from rdpo_lightning.errors import InputError

#: a YAML value of ``data.val_path``
ValPaths = str | list[str] | dict[str, str] | None

#: names a validation set may not take: split names and the metric namespaces of WorstCaseEvaluation
RESERVED = ("train", "worst_case", "reward")

#: a temporary column holding each validation pair's group set name, until the set is cut by group
GROUP_SET = "__group_set__"


def named_val_paths(val_path: ValPaths) -> dict[str, str]:
    """``data.val_path`` → {set name: path}: a mapping as given; a path, or each path of a list, named by its stem."""
    if val_path is None:
        return {}
    if isinstance(val_path, str):
        val_path = [val_path]
    if isinstance(val_path, dict):
        named = dict(val_path)
    elif isinstance(val_path, (list, tuple)):
        named = {}
        for index, path in enumerate(val_path):
            if not isinstance(path, str) or not path:
                raise InputError(f"data.val_path[{index}] must be a path, got {path!r}")
            name = Path(path.rstrip("/")).stem
            if name in named:
                raise InputError(
                    f"data.val_path: {named[name]!r} and {path!r} would both be named {name!r} (their file stem); "
                    "give a mapping name: path instead"
                )
            named[name] = path
    else:
        raise InputError(f"data.val_path must be a path, a list of paths or a mapping name: path; got {val_path!r}")
    for name, path in named.items():
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            raise InputError(f"data.val_path: {name!r}: {path!r} is not a set name and a path")
    return named


def check_val_fraction(val_fraction: float, val_split: str | None, val_paths: dict[str, str]) -> None:
    """A share in (0, 1), or 0 when another source gives a validation set (``val_split`` or ``val_path``)."""
    if val_fraction == 0 and val_split is None and not val_paths:
        raise InputError("data.val_fraction is 0 and there is no data.val_split or data.val_path: no validation set")
    other = val_split is not None or bool(val_paths)
    check_interval("data.val_fraction", val_fraction, 0.0, 1.0, open_low=not other, open_high=True)


def check_set_names(names: Sequence[tuple[str, str]]) -> None:
    """Every set (name, the key that named it) has its own name, none reserved: metrics are keyed by name."""
    seen: dict[str, str] = {}
    for name, key in names:
        if name in RESERVED:
            raise InputError(f"{key}: a validation set may not be named {name!r} (reserved: {', '.join(RESERVED)})")
        if name in seen:
            raise InputError(f"{seen[name]} and {key} both name a validation set {name!r}; rename one")
        seen[name] = key


def group_set_name(value: object) -> str:
    """The validation set of one group value: ``group=<value>``."""
    return f"group={value}"


def missing_group(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def stratified_holdout(
    groups: Sequence[object], fraction: float, seed: int
) -> tuple[list[int], list[int], list[object]]:
    """(training rows, held-out rows, groups left without held-out rows): ``fraction`` of each group's rows (at least
    one, at most all but one) held out, seeded, so that every group with two or more rows is validated. A group of
    one row stays in training."""
    rng = np.random.default_rng([seed, 19])
    members: dict[str, list[int]] = {}
    for row, value in enumerate(groups):
        members.setdefault(repr(value), []).append(row)
    train, held_out, unvalidated = [], [], []
    for rows in members.values():
        count = min(max(1, math.ceil(fraction * len(rows))), len(rows) - 1)
        order = rng.permutation(rows)
        held_out.extend(order[:count].tolist())
        train.extend(order[count:].tolist())
        if count == 0:
            unvalidated.append(groups[rows[0]])
    return sorted(train), sorted(held_out), unvalidated


def split_by_group(dataset: datasets.Dataset) -> dict[str, datasets.Dataset]:
    """The rows of each group set (the :data:`GROUP_SET` column names it), without that column: groups whose values
    read as numbers in numeric order, then the others in sorted order."""
    rows: dict[str, list[int]] = {}
    for index, name in enumerate(dataset[GROUP_SET]):
        rows.setdefault(name, []).append(index)
    plain = dataset.remove_columns(GROUP_SET)
    return {name: plain.select(rows[name]) for name in sorted(rows, key=_numeric_first)}


def _numeric_first(name: str) -> tuple[int, float, str]:
    value = name.removeprefix("group=")
    try:
        number = float(value)
    except ValueError:
        return (1, 0.0, value)
    return (0, number, value) if math.isfinite(number) else (1, 0.0, value)
