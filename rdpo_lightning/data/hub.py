"""Loading a table of rows the way users point at data: a Hub name, a local directory, or one local file.

Everything goes through ``datasets.load_dataset``, so downloads and Arrow conversion are cached by ``datasets``
itself, and a second load (another rank's ``setup``, the next run) reads the cache.
"""

from __future__ import annotations

from pathlib import Path

import datasets

#: file extensions read as a single local file, and the ``datasets`` builder that reads them
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def load_table(
    path: str,
    split: str = "train",
    name: str | None = None,
    revision: str | None = None,
    key: str = "data.path",
) -> datasets.Dataset:
    """One split of a data set: ``path`` is a local .json/.jsonl/.parquet/.csv file (its only split is ``train``),
    a local directory (``datasets`` infers splits from file names), or a Hub data set name.

    Errors name ``key`` (the YAML key holding ``path``) and say what was looked for.
    """
    local = Path(path).expanduser()
    try:
        if local.is_file():
            builder = FILE_BUILDERS.get(local.suffix.lower())
            if builder is None:
                raise ValueError(f"{key}={path}: unsupported file type {local.suffix!r}; use {sorted(FILE_BUILDERS)}")
            if split != "train":
                raise ValueError(f"{key}={path} is a single file, whose only split is 'train'; got split {split!r}")
            return datasets.load_dataset(builder, data_files=str(local), split="train")
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


def take(dataset: datasets.Dataset, limit: int | None) -> datasets.Dataset:
    """The first ``limit`` rows (all when ``limit`` is None): quick runs on a slice of a large data set."""
    return dataset if limit is None or limit >= len(dataset) else dataset.select(range(limit))


def check_fraction(key: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{key} must lie in (0, 1), got {value}")
