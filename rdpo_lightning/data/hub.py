"""Loading a table of rows the way users point at data: a Hub name, a local directory, or one local file.

Everything goes through ``datasets.load_dataset``, so downloads and Arrow conversion are cached by ``datasets``
itself, and a second load (another rank's ``setup``, the next run) reads the cache.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import pyarrow as pa

from rdpo_lightning.data.file_problems import first_problem, silent_problem

#: file extensions read as a single local file, and the ``datasets`` builder that reads them
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}

#: what ``datasets`` raises on a malformed file (pandas' parser errors are ValueErrors)
LOAD_ERRORS = (datasets.exceptions.DatasetGenerationError, pa.lib.ArrowException, ValueError, StopIteration)


def load_table(
    path: str,
    split: str = "train",
    name: str | None = None,
    revision: str | None = None,
    key: str = "data.path",
) -> datasets.Dataset:
    """One split of a data set: ``path`` is a local .json/.jsonl/.parquet/.csv file (its only split is ``train``),
    a local directory (``datasets`` infers splits from file names), or a Hub data set name.

    Errors name ``key`` (the YAML key holding ``path``) and, for a malformed local file, the row, its line and the
    column.
    """
    local = Path(path).expanduser()
    try:
        if local.is_file():
            return load_file(local, split, key)
        if local.is_dir():
            return datasets.load_dataset(str(local), name, split=split)
        return datasets.load_dataset(path, name, split=split, revision=revision)
    except ValueError as error:
        if str(error).startswith(key):
            raise
        raise ValueError(f"{key}={path}: {error}") from error
    except (datasets.exceptions.DatasetNotFoundError, FileNotFoundError, ConnectionError) as error:
        raise ValueError(
            f"{key}={path}: not a local file or directory, and the Hub data set could not be loaded ({error})"
        ) from error


def load_file(file: Path, split: str, key: str) -> datasets.Dataset:
    """A single local file, checked: malformed rows are errors naming the row and column, not a loader's trace."""
    builder = FILE_BUILDERS.get(file.suffix.lower())
    where = f"{key}={file}"
    if builder is None:
        raise ValueError(f"{where}: unsupported file type {file.suffix!r}; use {sorted(FILE_BUILDERS)}")
    if split != "train":
        raise ValueError(f"{where} is a single file, whose only split is 'train'; got split {split!r}")
    problem = silent_problem(file)
    if problem:
        raise ValueError(f"{where}: {problem}")
    try:
        table = datasets.load_dataset(builder, data_files=str(file), split="train")
    except LOAD_ERRORS as error:
        detail = first_problem(file) or f"{type(error).__name__}: {error.__cause__ or error}"
        raise ValueError(f"{where}: {detail}") from error
    if len(table) == 0:
        raise ValueError(f"{where}: the file holds no rows")
    return table


def take(dataset: datasets.Dataset, limit: int | None) -> datasets.Dataset:
    """The first ``limit`` rows (all when ``limit`` is None): quick runs on a slice of a large data set."""
    return dataset if limit is None or limit >= len(dataset) else dataset.select(range(limit))


def check_fraction(key: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{key} must lie in (0, 1), got {value}")
