"""Column paths: addressing values nested inside a row, such as UltraFeedback's raw per-completion ratings.

A path is a column name, then ``.key`` for a field of an object and ``[]`` for *each element* of a list:

* ``instruction``: a plain column;
* ``completions[].response``: the ``response`` field of every element of the list column ``completions``;
* ``completions[].annotations.helpfulness.Rating``: that element's nested rating.

Typed columns (struct fields, lists of structs, as ``datasets`` reads JSON and parquet) are read with Arrow's
struct and list kernels; JSON-typed columns, and any path that leaves the types (a missing key), are walked row by
row in Python, which also names the row of an error.

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
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


def _walk(value: Any, keys: list[str], path: str, key: str, where: str, row: str) -> Any:
    """The value at ``keys`` below ``value``; errors name ``where`` (the source), ``row``, the path and ``key``."""
    for depth, name in enumerate(keys):
        if value is None:
            return None
        if not isinstance(value, dict) or name not in value:
            above = ".".join(keys[:depth]) or "the row"
            if not isinstance(value, dict):
                problem = f"holds {type(value).__name__}, not an object with key {name!r}"
            else:
                problem = f"has no key {name!r} (its keys: {sorted(value)})"
            raise InputError(f"{where}, {row}: {key} path {path!r}: {above} {problem}")
        value = value[name]
    return value


def read_paths(table: datasets.Dataset, paths: dict[str, str], where: str) -> tuple[dict[str, list], list[str]]:
    """The values of each path (a list per path, one entry per row, or per list element where a path has ``[]``)
    and how an error names each entry (``row 3, completions[1]``). ``paths`` maps each path to the YAML key that
    gives it, for errors."""
    parts = {path: _split(path) for path in paths}
    lists = {outer for outer, _, _ in parts.values() if outer is not None}
    if len(lists) > 1 or any(path.count(EACH) > 1 for path in paths):
        raise InputError(
            f"{where}: the column paths {sorted(paths)} ({', '.join(sorted(set(paths.values())))}) walk "
            f"{len(lists)} lists; all '[]' paths of a table must walk the same one, once"
        )
    each = next(iter(lists), None)
    first = {path: (down or inner)[0] for path, (_, down, inner) in parts.items()}
    top = sorted(set(first.values()))
    missing = [c for c in top if c not in table.column_names]
    if missing:
        keys = sorted({paths[p] for p, column in first.items() if column in missing})
        raise InputError(
            f"{where}: missing column(s) {missing} (set by {', '.join(keys)}); the data has columns "
            f"{table.column_names}"
        )
    fast = _read_arrow(table, parts, each)
    if fast is not None:
        return fast
    values: dict[str, list] = {path: [] for path in paths}
    names: list[str] = []
    for row, record in enumerate(table.select_columns(top).to_list()):
        at = f"row {row}"
        elements: list = [None]
        if each is not None:
            items = _walk(record, each.split("."), each + EACH, "data", where, at)
            if items is not None and not isinstance(items, list):
                raise InputError(f"{where}, {at}: {each!r} holds {type(items).__name__}, not a list ('{each}[]' paths)")
            elements = items or []
        for index, element in enumerate(elements):
            name = at if each is None else f"{at}, {each}[{index}]"
            for path, key in paths.items():
                outer, _, inner = parts[path]
                source = record if outer is None else element
                values[path].append(_walk(source, inner, path, key, where, name))
            names.append(name)
    return values, names


def _struct_path(array: pa.Array, keys: list[str]) -> pa.Array | None:
    """``array``'s nested field at ``keys``; None where a step is not a struct field (the Python walk then names
    the row and the keys it has)."""
    for name in keys:
        if not pa.types.is_struct(array.type) or array.type.get_field_index(name) < 0:
            return None
        array = pc.struct_field(array, name)
    return array


def _read_arrow(
    table: datasets.Dataset, parts: dict[str, tuple[str | None, list[str], list[str]]], each: str | None
) -> tuple[dict[str, list], list[str]] | None:
    """:func:`read_paths` with Arrow's struct and list kernels, for typed columns (struct fields, lists of structs);
    None when a path leaves them (a JSON-typed column, a missing key, an indices mapping): the Python walk reads it."""
    if getattr(table, "_indices", None) is not None:
        return None
    arrow = table.data.table
    columns = {}
    for path, (outer, down, inner) in parts.items():
        keys = down if outer is not None else inner
        columns[path] = _struct_path(arrow.column(keys[0]).combine_chunks(), keys[1:])
        if columns[path] is None:
            return None
    rows = np.arange(len(table))
    element = None
    if each is not None:
        lists = columns[next(path for path, part in parts.items() if part[0] is not None)]
        if not pa.types.is_list(lists.type) and not pa.types.is_large_list(lists.type):
            return None
        lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
        rows = np.repeat(rows, lengths)
        element = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    values = {}
    for path, (outer, _, inner) in parts.items():
        if outer is None:
            array = columns[path].take(pa.array(rows)) if each is not None else columns[path]
        else:
            array = _struct_path(pc.list_flatten(columns[path]), inner)
            if array is None:
                return None
        values[path] = array.to_pylist()
    if element is None:
        return values, [f"row {row}" for row in rows]
    return values, [f"row {row}, {each}[{index}]" for row, index in zip(rows, element, strict=True)]
