"""Column paths: addressing values nested inside a row, such as UltraFeedback's raw per-completion ratings.

A path is a column name, then ``.key`` for a field of an object and ``[]`` for *each element* of a list:

* ``instruction``: a plain column;
* ``completions[].response``: the ``response`` field of every element of the list column ``completions``;
* ``completions[].annotations.helpfulness.Rating``: that element's nested rating.

A table read through paths with ``[]`` has one row per list element (the UltraFeedback raw row with four
completions becomes four completion rows); paths without ``[]`` repeat their row's value on each. All ``[]`` paths of
one table must walk the same list (``completions[]``) and use ``[]`` once. A column whose name itself contains ``.``
or ``[]`` is read as that column. A null anywhere along a path is a null value (a skip, counted by the caller); a key
that an object lacks is an error naming the path, the YAML key, the row and the keys the object has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets

from rdpo_lightning.errors import InputError

EACH = "[]"


def is_path(name: str, columns: Sequence[str]) -> bool:
    """Whether ``name`` needs path reading (it is not a column of its own)."""
    return name not in columns and ("." in name or EACH in name)


def _split(path: str) -> tuple[str | None, list[str], list[str]]:
    """(the list column walked with ``[]`` or None, keys down to it, keys inside each element)."""
    if EACH in path:
        outer, _, inner = path.partition(EACH)
        return outer, outer.split("."), [k for k in inner.split(".") if k]
    return None, [], path.split(".")


def _walk(value: Any, keys: list[str], path: str, key: str, where: str) -> Any:
    walked = []
    for name in keys:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise InputError(
                f"{where}: {key} path {path!r}: {'.'.join(walked) or 'the row'} holds {type(value).__name__}, not an "
                f"object with key {name!r}"
            )
        if name not in value:
            raise InputError(
                f"{where}: {key} path {path!r}: {'.'.join(walked) or 'the row'} has no key {name!r} (its keys: "
                f"{sorted(value)})"
            )
        value = value[name]
        walked.append(name)
    return value


def read_paths(table: datasets.Dataset, paths: dict[str, str], where: str) -> tuple[dict[str, list], list[str]]:
    """The values of each path (a list per path, one entry per row, or per list element where a path has ``[]``)
    and how an error names each entry (``row 3, completions[1]``). ``paths`` maps each path to the YAML key that
    gives it, for errors."""
    lists = {_split(path)[0] for path in paths if _split(path)[0] is not None}
    if len(lists) > 1 or any(path.count(EACH) > 1 for path in paths):
        raise InputError(
            f"{where}: the column paths {sorted(paths)} ({', '.join(sorted(set(paths.values())))}) walk "
            f"{len(lists)} lists; all '[]' paths of a table must walk the same one, once"
        )
    each = next(iter(lists), None)
    first = {path: (_split(path)[1] or _split(path)[2])[0] for path in paths}
    top = sorted(set(first.values()))
    missing = [c for c in top if c not in table.column_names]
    if missing:
        keys = sorted({paths[p] for p, column in first.items() if column in missing})
        raise InputError(
            f"{where}: missing column(s) {missing} (set by {', '.join(keys)}); the data has columns "
            f"{table.column_names}"
        )
    values: dict[str, list] = {path: [] for path in paths}
    names: list[str] = []
    for row, record in enumerate(table.select_columns(top).to_list()):
        at = f"row {row}"
        elements: list = [None]
        if each is not None:
            items = _walk(record, each.split("."), each + EACH, "data", f"{where}, {at}")
            if items is not None and not isinstance(items, list):
                raise InputError(f"{where}, {at}: {each!r} holds {type(items).__name__}, not a list ('{each}[]' paths)")
            elements = items or []
        for index, element in enumerate(elements):
            name = at if each is None else f"{at}, {each}[{index}]"
            for path, key in paths.items():
                outer, _, inner = _split(path)
                source = record if outer is None else element
                values[path].append(_walk(source, inner, path, key, f"{where}, {name}"))
            names.append(name)
    return values, names
