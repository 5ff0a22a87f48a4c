"""Naming the first malformed row of a local .json / .jsonl / .csv file.

``datasets`` reads JSON through pyarrow and CSV through pandas. On a malformed file their errors give a byte
position, a row counted from the start of some block, or nothing useful; and two problems pass them silently: bytes
that are not UTF-8 inside JSON text are read, and fail only when the row is decoded, deep inside a later step; an
unpaired UTF-16 surrogate escape (``"\\ud800"``) in a JSON array is dropped from the text. So a file is checked for
those two before it is loaded (fast: one C-speed pass), and a CSV file for a first row with more fields than its
header (pandas silently takes it for an index and shifts every value one column to the left). When a problem is
found or the load fails, the file is read again in plain Python to name the row (0-based, as every data error here
counts rows), its line and the column.
"""

from __future__ import annotations

import codecs
import csv
import json
import math
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: formats read as text, which these checks cover (parquet is binary and typed)
TEXT_SUFFIXES = (".json", ".jsonl", ".csv")
_CHUNK = 1 << 20
#: a high surrogate escape not followed by a low one, or a low one not preceded by a high one
_LONE_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def silent_problem(file: Path) -> str | None:
    """The problems ``datasets`` would let through (see the module docstring), described; None when there are none."""
    suffix = file.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        return None
    if _undecodable(file, surrogates=suffix != ".csv"):
        return first_problem(file)
    return _csv_first_row_problem(file) if suffix == ".csv" else None


def first_problem(file: Path) -> str | None:
    """The first malformed row of ``file`` described ("row 4 (line 5), column 'chosen': ..."); None when plain Python
    finds nothing wrong (the caller then reports the loader's own error)."""
    suffix = file.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        return None
    if not file.read_bytes().strip():
        return "the file is empty"
    if suffix == ".csv":
        return _csv_problem(file)
    if suffix == ".jsonl":
        return _json_lines_problem(file)
    return _json_array_problem(file)


# --- fast checks -----------------------------------------------------------------------------------------------------
def _chunks(file: Path) -> Iterator[bytes]:
    with file.open("rb") as handle:
        yield from iter(lambda: handle.read(_CHUNK), b"")


def _undecodable(file: Path, surrogates: bool) -> bool:
    """Whether the file holds bytes that are not UTF-8 or, with ``surrogates`` (JSON), a lone surrogate escape: one
    pass over the bytes for both."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    tail = b""
    try:
        for chunk in _chunks(file):
            decoder.decode(chunk)
            if surrogates and _LONE_SURROGATE.search(tail + chunk):
                return True
            tail = chunk[-12:]  # a pair cut by the chunk boundary is seen whole next time
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return True
    return False


# --- describing one value ------------------------------------------------------------------------------------------
class _TooBig(str):
    """A number literal that does not fit in 64 bits (pyarrow and ujson refuse it), kept as its text."""


def _parse_float(text: str) -> float | _TooBig:
    value = float(text)
    return _TooBig(text) if math.isinf(value) else value


def _parse_int(text: str) -> int | _TooBig:
    value = int(text)
    return value if -(2**63) <= value < 2**64 else _TooBig(text)


def _bad_value(value: Any) -> str | None:
    """Why a decoded value cannot be read (text with undecodable bytes, read with ``surrogateescape``, or an unpaired
    surrogate; a number too big), looking inside lists and objects; None when it is fine."""
    if isinstance(value, _TooBig):
        return f"the number {value} does not fit in 64 bits"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            bad = value[error.start : error.end]
            raw = bad.encode("utf-8", "surrogateescape") if all("\udc80" <= c <= "\udcff" for c in bad) else None
            near = value[max(0, error.start - 20) : error.start].encode("utf-8", "replace").decode()
            what = f"bytes {raw!r} that are not UTF-8" if raw else f"an unpaired surrogate {bad!r}"
            return f"text with {what} (after {near!r})"
        return None
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        problem = _bad_value(child)
        if problem:
            return problem
    return None


def _row_problem(row: Any, where: str) -> str | None:
    if not isinstance(row, dict):
        return f"{where} holds a JSON {type(row).__name__}, expected an object of column: value"
    for column, value in row.items():
        problem = _bad_value(value)
        if problem:
            return f"{where}, column {column!r}: {problem}"
    return None


def _parse(text: str, where: str, one_line: bool) -> tuple[Any, str | None]:
    try:
        return json.loads(text, parse_float=_parse_float, parse_int=_parse_int), None
    except json.JSONDecodeError as error:
        at = f"character {error.colno}" if one_line else f"line {error.lineno}, character {error.colno}"
        return None, f"{where}: not valid JSON ({error.msg} at {at})"


# --- per format ----------------------------------------------------------------------------------------------------
def _json_lines_problem(file: Path) -> str | None:
    row = 0
    with file.open("rb") as handle:
        for line_number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            where = f"row {row} (line {line_number})"
            value, problem = _parse(raw.decode("utf-8", "surrogateescape").strip(), where, one_line=True)
            problem = problem or _row_problem(value, where)
            if problem:
                return problem
            row += 1
    return None if row else "the file holds no rows"


def _json_array_problem(file: Path) -> str | None:
    value, problem = _parse(file.read_bytes().decode("utf-8", "surrogateescape"), "the file", one_line=False)
    if problem:
        return problem
    if not isinstance(value, list):
        return f"the file holds a JSON {type(value).__name__}; expected a list of rows (or one row per line, .jsonl)"
    for row, item in enumerate(value):
        problem = _row_problem(item, f"row {row}")
        if problem:
            return problem
    return None if value else "the file holds no rows"


@contextmanager
def _csv_reader(file: Path, **kwargs: Any) -> Iterator[Any]:
    """``csv.reader`` over the file, undecodable bytes kept as surrogates, without the 128 kB limit on a field (a
    huge row is legal; pandas has no such limit), which is restored after."""
    limit = csv.field_size_limit(sys.maxsize)
    try:
        with file.open(encoding="utf-8", errors="surrogateescape", newline="") as handle:
            yield csv.reader(handle, **kwargs)
    finally:
        csv.field_size_limit(limit)


def _csv_first_row_problem(file: Path) -> str | None:
    """pandas takes a first row with more fields than the header for a row with an index column: every value
    shifts one column to the left, silently. Later rows with the wrong count are errors pandas raises itself."""
    with _csv_reader(file) as reader:
        header = next(reader, None)
        start = reader.line_num + 1
        for fields in reader:
            if fields:  # the first row
                if header is not None and len(fields) > len(header):
                    return f"row 0 (line {start}) has {len(fields)} fields, the header has {len(header)}"
                return None
            start = reader.line_num + 1
    return None


def _csv_problem(file: Path) -> str | None:
    with _csv_reader(file, strict=True) as reader:
        try:
            header = next(reader)
            for column in header:
                if _bad_value(column):
                    return f"the header (line 1), column {column!r}: {_bad_value(column)}"
            row, start = 0, reader.line_num + 1
            for fields in reader:
                where = f"row {row} (line {start})"
                start = reader.line_num + 1
                if not fields:  # a blank line is no row (pandas skips it too)
                    continue
                if len(fields) > len(header):  # fewer are missing values, as pandas reads them
                    return f"{where} has {len(fields)} fields, the header has {len(header)}"
                for column, field in zip(header, fields, strict=True):
                    problem = _bad_value(field)
                    if problem:
                        return f"{where}, column {column!r}: {problem}"
                row += 1
            if not row:
                return "the file holds no rows"
        except StopIteration:
            return "the file is empty"
        except csv.Error as error:
            return f"line {reader.line_num}: not valid CSV ({error})"
    return None
