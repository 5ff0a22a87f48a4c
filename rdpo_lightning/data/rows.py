"""Checking preference rows before tokenisation: which malformed rows are errors and which are counted skips.

The rule (docs/data.md has the full table): a problem with the *configuration or schema* (a missing column, a value
of the wrong type) is an error naming the split, row and column, because no amount of skipping fixes it; a problem
with *one row's content* (a null, an empty response, identical chosen and rejected) is a counted, logged skip,
because real data sets contain a few such rows and one should not stop a run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import datasets

from rdpo_lightning.data.tokenize import DROP_COLUMN, TRUNCATION_COLUMN, tokenize_pair
from rdpo_lightning.errors import InputError

PAIR_COLUMNS = ("prompt", "chosen", "rejected")

#: skip reasons, as counted and logged
MISSING_VALUE = "null prompt, chosen or rejected"
EMPTY_RESPONSE = "empty chosen or rejected response"
IDENTICAL = "identical chosen and rejected"


def require_columns(dataset: datasets.Dataset, columns: Iterable[str], where: str, keys: Sequence[str] = ()) -> None:
    """Raise naming the missing columns, the YAML keys that name them (when given) and what the data holds."""
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        hint = f" (set by {', '.join(keys)})" if keys else ""
        raise InputError(f"{where}: missing column(s) {missing}{hint}; the data has columns {dataset.column_names}")


def pair_problem(example: dict[str, Any], index: int, split: str) -> str:
    """The skip reason of a row of strings ("" when fine); a value that is not a string is an error."""
    values = [example[c] for c in PAIR_COLUMNS]
    if any(v is None for v in values):
        return MISSING_VALUE
    for column, value in zip(PAIR_COLUMNS, values, strict=True):
        if not isinstance(value, str):
            raise InputError(
                f"{split}, row {index}: column {column!r} holds {type(value).__name__}, expected text "
                "(chat messages are rendered to text before tokenisation)"
            )
    if not example["chosen"].strip() or not example["rejected"].strip():
        return EMPTY_RESPONSE
    if example["chosen"] == example["rejected"]:
        return IDENTICAL
    return ""


def check_group(example: dict[str, Any], index: int, split: str) -> None:
    group = example.get("group")
    if group is None or isinstance(group, bool) or not isinstance(group, int) or group < 0:
        raise InputError(f"{split}, row {index}: group id must be an integer >= 0, got {group!r}")


def check_and_tokenize(example: dict[str, Any], index: int, split: str, **tokenize_kwargs: Any) -> dict[str, Any]:
    """Row checks, then :func:`tokenize_pair`; a skipped row gets empty ids and its reason in ``drop_reason``."""
    if "group" in example:
        check_group(example, index, split)
    problem = pair_problem(example, index, split)
    if problem:
        return {"prompt_ids": [], "chosen_ids": [], "rejected_ids": [], DROP_COLUMN: problem, TRUNCATION_COLUMN: ""}
    return tokenize_pair(example, **tokenize_kwargs)
