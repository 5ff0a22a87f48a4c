"""Loading a table of rows the way users point at data: a Hub name, a local directory, or one local file.

Everything goes through ``datasets.load_dataset``, so downloads and Arrow conversion are cached by ``datasets``
itself, and a second load (another rank's ``setup``, the next run) reads the cache.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pyarrow as pa

from rdpo_lightning.data.file_problems import first_problem, silent_problem
from rdpo_lightning.errors import InputError

#: file extensions read as a single local file, and the ``datasets`` builder that reads them
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}

#: pandas' default missing-value markers, kept for CSV columns that are not text (scores, groups)
CSV_NA_MARKERS = sorted(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA"}
    | {"NULL", "NaN", "None", "n/a", "nan", "null"}
)

#: JSON files up to this size are parsed as one block (see :func:`json_options`)
SINGLE_BLOCK_BYTES = 1 << 30

#: what ``datasets`` raises on a malformed file (pandas' parser errors are ValueErrors)
LOAD_ERRORS = (datasets.exceptions.DatasetGenerationError, pa.lib.ArrowException, ValueError, StopIteration)


def load_table(
    path: str,
    split: str = "train",
    name: str | None = None,
    revision: str | None = None,
    key: str = "data.path",
    text_columns: Sequence[str] = (),
) -> datasets.Dataset:
    """One split of a data set: ``path`` is a local .json/.jsonl/.parquet/.csv file (its only split is ``train``),
    a ``save_to_disk`` directory (:func:`load_saved`), a local directory of files (``datasets`` infers splits from
    file names), or a Hub data set name.

    ``text_columns`` are read from a CSV file verbatim: an empty cell is empty text, ``NA`` or ``null`` is that
    word and ``007`` stays ``"007"`` (pandas would make them nulls and numbers). Errors name ``key`` (the YAML key
    holding ``path``) and, for a malformed local file, the row, its line and the column.
    """
    local = Path(path).expanduser()
    try:
        if local.is_file():
            return load_file(local, split, key, text_columns)
        if local.is_dir() and is_saved_to_disk(local):
            return load_saved(local, split, key)
        if local.is_dir():
            with no_download_count():
                return datasets.load_dataset(str(local), name, split=split)
        return datasets.load_dataset(path, name, split=split, revision=revision)
    except ValueError as error:
        if str(error).startswith(key):
            raise InputError(str(error)) from error
        raise InputError(f"{key}={path}: {error}") from error
    except (datasets.exceptions.DatasetNotFoundError, FileNotFoundError, ConnectionError) as error:
        raise InputError(
            f"{key}={path}: not a local file or directory, and the Hub data set could not be loaded ({error})"
        ) from error


def load_file(file: Path, split: str, key: str, text_columns: Sequence[str] = ()) -> datasets.Dataset:
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
        options = {}
        if builder == "csv":
            options = csv_options(file, text_columns)
        elif builder == "json":
            options = json_options(file)
        with no_download_count():
            table = datasets.load_dataset(builder, data_files=str(file), split="train", **options)
    except LOAD_ERRORS as error:
        detail = first_problem(file) or f"{type(error).__name__}: {error.__cause__ or error}"
        raise ValueError(f"{where}: {detail}") from error
    if len(table) == 0:
        raise ValueError(f"{where}: the file holds no rows")
    if builder == "json" and table.column_names == ["text"]:  # how datasets reads rows that are not JSON objects
        problem = first_problem(file)
        if problem:
            raise ValueError(f"{where}: {problem}")
    return table


def is_saved_to_disk(directory: Path) -> bool:
    """A directory written by ``Dataset.save_to_disk`` (``state.json``) or ``DatasetDict.save_to_disk``
    (``dataset_dict.json``): ``load_dataset`` refuses those, ``load_from_disk`` reads them."""
    return (directory / "dataset_dict.json").is_file() or (directory / "state.json").is_file()


def load_saved(directory: Path, split: str, key: str) -> datasets.Dataset:
    """One split of a ``save_to_disk`` directory: a DatasetDict's split by name; a Dataset as ``train`` or under the
    split name it was saved with."""
    where = f"{key}={directory}"
    saved = datasets.load_from_disk(str(directory))
    if isinstance(saved, datasets.DatasetDict):
        if split not in saved:
            raise InputError(
                f"{where}: the saved DatasetDict has no split {split!r} (data.train_split / data.val_split); its "
                f"splits are {list(saved)}"
            )
        return saved[split]
    saved_as = str(saved.split) if saved.split is not None else None
    if split not in ("train", saved_as):
        also = f" (saved as split {saved_as!r})" if saved_as else ""
        raise InputError(f"{where} is a saved Dataset{also}, whose only split is 'train'; got split {split!r}")
    return saved


@contextlib.contextmanager
def no_download_count() -> Iterator[None]:
    """Local loads skip ``datasets``' download-count ping to the Hub: it counts nothing useful for a local file,
    and on an offline cluster node it stalls every load for its 3 s timeout."""
    before = datasets.config.HF_UPDATE_DOWNLOAD_COUNTS
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
    try:
        yield
    finally:
        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = before


def json_options(file: Path) -> dict[str, Any]:
    """Read a JSON file up to :data:`SINGLE_BLOCK_BYTES` as one pyarrow block.

    pyarrow's JSON reader (26.0) *segfaults* when a column changes type (text to a list, an object to a number, ...)
    between the blocks it parses in parallel; within one block the same change is an error ``datasets`` handles. The
    loader parses a batch of ``chunksize`` bytes in blocks of ``chunksize // 32`` unless the batch is over 8 blocks
    long, so a file (or the last batch of a larger one) of about 0.3-2.6 MB was read in several blocks.
    """
    size = file.stat().st_size
    return {"chunksize": 32 * (size + 1)} if size <= SINGLE_BLOCK_BYTES else {}


def csv_options(file: Path, text_columns: Sequence[str]) -> dict[str, Any]:
    """``pandas.read_csv`` options that read ``text_columns`` verbatim and every other column as pandas would."""
    if not text_columns:
        return {}
    header = list(pd.read_csv(file, nrows=0).columns)
    text = [c for c in header if c in text_columns]
    return {
        "converters": dict.fromkeys(text, str),
        "keep_default_na": False,
        "na_values": {c: CSV_NA_MARKERS for c in header if c not in text},
    }


def take(dataset: datasets.Dataset, limit: int | None) -> datasets.Dataset:
    """The first ``limit`` rows (all when ``limit`` is None): quick runs on a slice of a large data set."""
    return dataset if limit is None or limit >= len(dataset) else dataset.select(range(limit))
