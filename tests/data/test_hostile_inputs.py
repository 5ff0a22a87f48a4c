"""Hostile inputs, fuzzed with hypothesis through the real data path.

Every example writes a real file (jsonl, json, csv or parquet; raw bytes where the encoding is the point), builds the
real DataModule with a real tokenizer, runs ``prepare_data``/``setup`` and draws a batch. The property: either an
error from our own code naming the row and the column, or success in which every generated row is accounted for
(kept + dropped per reason == rows written, each reason as the oracle predicts) and the drop is logged.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from rdpo_lightning.data import (
    AttributeWorld,
    AttributeWorldDataModule,
    PairwisePreferenceDataModule,
    ScoredCompletionsDataModule,
)
from rdpo_lightning.data.pairing import TIED
from rdpo_lightning.data.rows import EMPTY_RESPONSE, IDENTICAL, MISSING_VALUE
from rdpo_lightning.data.scored import EMPTY_RESPONSE as EMPTY_COMPLETION
from rdpo_lightning.data.scored import NULL_PROMPT, NULL_SCORE, TOO_FEW
from rdpo_lightning.data.tokenize import IDENTICAL_AFTER_TRUNCATION

LOGGER = "rdpo_lightning.data.datamodule"
WORDS = [w for w in AttributeWorld().vocabulary() if w.isalpha()]
ATTRIBUTES = AttributeWorld().attributes
FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
GOOD = {"prompt": "the day", "chosen": "happy sunny", "rejected": "gloomy rain"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory):
    """One folder for the module's files, and ``datasets``' own cache inside it (not the user's home). Each local
    load would also send the Hub a download-count request, which without a network can stall for seconds: off."""
    root = tmp_path_factory.mktemp("hostile")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", str(root / "hf_cache"))
        patch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
        yield root


def fresh_dir(root: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=root))


# --- writing files the way users have them ---------------------------------------------------------------------------
def write_rows(path: Path, rows: list[dict], fmt: str) -> str:
    """``rows`` as a .jsonl / .json (one object per line) / .csv / .parquet file; a missing key is a missing field
    (an empty cell in CSV, a null in parquet)."""
    file = path.with_suffix(f".{fmt}")
    if fmt == "jsonl":
        file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif fmt == "json":
        file.write_text("[\n" + ",\n".join(json.dumps(row) for row in rows) + "\n]\n")
    elif fmt == "csv":
        columns = list(dict.fromkeys(key for row in rows for key in row))
        with file.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, columns, restval="")
            writer.writeheader()
            writer.writerows([{k: "" if v is None else v for k, v in row.items()} for row in rows])
    else:
        columns = list(dict.fromkeys(key for row in rows for key in row))
        pq.write_table(pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows]), file)
    return str(file)


def raised_in_our_code(error: BaseException) -> bool:
    """The error was raised by rdpo_lightning itself, not by torch/datasets/pyarrow deep below it."""
    return "rdpo_lightning" in traceback.extract_tb(error.__traceback__)[-1].filename


def pairwise(path: str, tokenizer: Path, val_path: str, **kwargs) -> PairwisePreferenceDataModule:
    kwargs = {"max_length": 64, "max_prompt_length": 16, "batch_size": 4, **kwargs}
    if val_path is not None:
        kwargs.setdefault("val_fraction", 0)  # the file is the only validation set: every training row trains
    return PairwisePreferenceDataModule(path=path, tokenizer=str(tokenizer), val_path=val_path, **kwargs)


def run_to_a_batch(dm) -> dict:
    dm.prepare_data()
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


# --- strategies: rows whose fate the test knows in advance -----------------------------------------------------------
words = st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(" ".join)
blank = st.text(alphabet=" \t\n\r\x0b\x0c\xa0\u2003\u3000", max_size=4)
#: any text but surrogates (lone surrogates have their own test: they are not valid UTF-8)
anything = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | anything,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("xyz"), inner, max_size=3),
    max_leaves=5,
)


@st.composite
def distinct_responses(draw) -> tuple[str, str]:
    chosen, rejected = draw(words), draw(words)
    return chosen, rejected if rejected.split() != chosen.split() else f"{rejected} a"


@st.composite
def pair_rows(draw) -> tuple[dict, str]:
    """A row and its fate as written to JSON/parquet: "" (kept) or the reason it is skipped."""
    chosen, rejected = draw(distinct_responses())
    row = {"prompt": draw(words), "chosen": chosen, "rejected": rejected}
    kind = draw(
        st.sampled_from(
            ["good", "null", "missing", "blank", "identical", "same_tokens", "huge", "blank_prompt", "odd_prompt"]
        )
    )
    event(kind)
    fate = ""
    if kind in ("null", "missing"):
        column = draw(st.sampled_from(["prompt", "chosen", "rejected"]))
        if kind == "null":
            row[column] = None
        else:
            del row[column]
        fate = MISSING_VALUE
    elif kind == "blank":
        row[draw(st.sampled_from(["chosen", "rejected"]))] = draw(blank)
        fate = EMPTY_RESPONSE
    elif kind == "identical":
        row["rejected"] = row["chosen"]
        fate = IDENTICAL
    elif kind == "same_tokens":  # differ as text, not as tokens: unknown words, or other whitespace
        row["chosen"], row["rejected"] = f"{chosen} zzyzx", f"{chosen}  \tqwvx"
        fate = IDENTICAL_AFTER_TRUNCATION
    elif kind == "huge":  # cut to max_prompt_length / max_length, kept
        size = draw(st.integers(2_000, 40_000))
        row["prompt"] = " ".join([draw(st.sampled_from(WORDS))] * size)
        row["chosen"] = chosen + " " + " ".join(["happy"] * size)
    elif kind == "blank_prompt":
        row["prompt"] = draw(blank)
    elif kind == "odd_prompt":
        row["prompt"] = draw(anything)
    if draw(st.booleans()):  # extra columns, of any JSON type, are ignored
        row.update(draw(st.dictionaries(st.sampled_from(["id", "score", "meta", "source"]), json_values, max_size=3)))
    return row, fate


def as_csv_fate(row: dict, fate: str) -> str:
    """CSV has no null: a missing value is an empty cell, read as empty text."""
    if fate != MISSING_VALUE:
        return fate
    if row.get("chosen") is None or row.get("rejected") is None:
        return EMPTY_RESPONSE
    return ""  # an empty prompt is a valid (unconditional) prompt


def csv_safe(row: dict) -> dict:
    """Extra values as JSON text: a CSV cell is text."""
    return {k: (json.dumps(v) if k not in GOOD and v is not None else v) for k, v in row.items()}


# --- 1. content problems: counted, logged skips; nothing lost --------------------------------------------------------
@settings(FUZZ, max_examples=150)
@given(
    rows=st.lists(pair_rows(), min_size=1, max_size=12),
    fmt=st.sampled_from(["jsonl", "json", "csv", "parquet"]),
)
# what fuzzing found, pinned: a null prompt was re-read as an HH-RLHF row; an empty prompt left the response's
# first token unscored (and in CSV became a null)
@example(rows=[({"prompt": None, "chosen": "the", "rejected": "a"}, MISSING_VALUE)], fmt="jsonl")
@example(rows=[({"prompt": "", "chosen": "the", "rejected": "a"}, "")], fmt="csv")
def test_every_row_is_kept_or_counted(rows, fmt, workdir, world_tokenizer_dir, caplog):
    directory = fresh_dir(workdir)
    rows = [(GOOD, "")] + rows  # at least one pair survives
    if fmt == "csv":
        rows = [(csv_safe(row), as_csv_fate(row, fate)) for row, fate in rows]
    if fmt == "parquet":  # one type per column: extras as text
        rows = [({k: (json.dumps(v) if k not in GOOD else v) for k, v in row.items()}, fate) for row, fate in rows]
    path = write_rows(directory / "train", [row for row, _ in rows], fmt)
    val = write_rows(directory / "val", [GOOD], "jsonl")
    expected = Counter(fate for _, fate in rows if fate)
    dm = pairwise(path, world_tokenizer_dir, val)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        batch = run_to_a_batch(dm)
    assert dm.drop_reasons.get("train", {}) == dict(expected)
    assert len(dm.train_dataset) + dm.dropped["train"] == len(rows)
    assert len(dm.train_dataset) == sum(1 for _, fate in rows if not fate)
    if expected:
        assert f"train: dropped {sum(expected.values())} of {len(rows)} pairs" in caplog.text
    assert batch["input_ids"].shape[0] == 2 * min(4, len(dm.train_dataset))
    for pair in dm.train_dataset:  # every response token is scored: a prompt token precedes it
        assert pair["prompt_ids"] and pair["chosen_ids"] and pair["rejected_ids"]
        assert len(pair["prompt_ids"]) <= 16 and len(pair["prompt_ids"]) + len(pair["chosen_ids"]) <= 64


# --- 2. schema and encoding problems: errors naming the row and the column -------------------------------------------
CUSTOM = {"prompt": "question", "chosen": "good", "rejected": "bad"}
BAD = "@@BAD@@"
NOT_UTF8 = [b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf", b"\x80abc"]
wrong_types = (
    st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.booleans()
    | st.lists(st.integers(0, 9), min_size=1, max_size=3)
    | st.lists(words, min_size=1, max_size=2)
    | st.fixed_dictionaries({"text": words})
    | st.just([{"role": "user", "content": None}])
)
FORMATS_FOR = {
    "wrong_type": ["jsonl", "json", "parquet"],
    "not_utf8": ["jsonl", "json", "csv"],
    "lone_surrogate": ["jsonl", "json"],
    "bad_json": ["jsonl", "json"],
    "not_an_object": ["jsonl", "json"],
    "extra_field": ["csv"],
    "huge_number": ["jsonl"],
}


@dataclass
class BrokenFile:
    """Rows to write, the byte surgery that breaks the file, and what the error must say."""

    kind: str
    rows: list[dict]
    fmt: str
    names: dict[str, str]  # role -> the file's column
    expected: list[str]
    patch: Callable[[bytes], bytes] = lambda content: content
    may_load: bool = False  # an unused column that the loader may read or refuse


def replace_line(content: bytes, at: int, line: bytes, separator: bytes = b"\n") -> bytes:
    lines = content.split(separator)
    lines[at] = line
    return separator.join(lines)


@st.composite
def broken_files(draw, kind: str) -> BrokenFile:
    fmt = draw(st.sampled_from(FORMATS_FOR[kind]))
    names = draw(st.sampled_from([dict(zip(GOOD, GOOD, strict=True)), CUSTOM]))
    n = draw(st.integers(1, 8))
    row = draw(st.integers(0, n - 1))
    column = names[draw(st.sampled_from(list(GOOD)))]
    rows = []
    for _ in range(n):
        chosen, rejected = draw(distinct_responses())
        rows.append({names["prompt"]: draw(words), names["chosen"]: chosen, names["rejected"]: rejected})
    case = BrokenFile(kind, rows, fmt, names, [f"row {row}", f"column {column!r}"])
    if kind == "wrong_type":
        if fmt == "parquet":  # one type per column: the others are null
            for other in rows:
                other[column] = None
        rows[row][column] = draw(wrong_types)
        case.expected.append("holds")
    elif kind in ("not_utf8", "lone_surrogate"):
        rows[row][column] = f"{rows[row][column]} {BAD}"
        bad = draw(st.sampled_from(NOT_UTF8 if kind == "not_utf8" else [b"\\ud800", b"\\udfff", b"\\udbff x"]))
        case.patch = lambda content: content.replace(BAD.encode(), bad)
        case.expected.append("not UTF-8" if kind == "not_utf8" else "unpaired surrogate")
    elif kind == "huge_number":  # fails the loader where the column also holds text (alone it becomes a float)
        rows.append(dict(rows[0]))
        for other in rows:
            other["meta"] = "text"
        rows[row]["meta"] = BAD
        number = str(draw(st.integers(2**64, 2**80))).encode()
        case.patch = lambda content: content.replace(f'"{BAD}"'.encode(), number)
        case.expected, case.may_load = [f"row {row}", "column 'meta'", "does not fit in 64 bits"], True
    elif kind in ("bad_json", "not_an_object"):
        at = row if fmt == "jsonl" else row + 1  # json: "[" is line 1
        comma = b"," if fmt == "json" and row < n - 1 else b""
        if kind == "bad_json":
            line = b'{"' + column.encode() + b'": "a" "x": 1}' + comma
            case.expected = [f"line {at + 1}", "not valid JSON"] + ([f"row {row}"] if fmt == "jsonl" else [])
        else:
            line = draw(st.sampled_from([b'["a", "b"]', b'"text"', b"3"])) + comma
            case.expected = [f"row {row}", "holds a JSON"]
        case.patch = lambda content: replace_line(content, at, line)
    elif kind == "extra_field":
        case.patch = lambda content: replace_line(content, row + 1, content.split(b"\r\n")[row + 1] + b",x", b"\r\n")
        case.expected = [f"row {row} (line {row + 2})", "has 4 fields, the header has 3"]
    return case


@pytest.mark.parametrize("kind", sorted(FORMATS_FOR))
@settings(FUZZ, max_examples=25)
@given(data=st.data())
def test_broken_files_name_the_row_and_column(kind, data, workdir, world_tokenizer_dir):
    case = data.draw(broken_files(kind))
    event(case.fmt)
    directory = fresh_dir(workdir)
    path = Path(write_rows(directory / "train", case.rows, case.fmt))
    path.write_bytes(case.patch(path.read_bytes()))
    val = write_rows(directory / "val", [{case.names[k]: v for k, v in GOOD.items()}], "jsonl")
    columns = {f"{role}_column": column for role, column in case.names.items()}
    try:
        run_to_a_batch(pairwise(str(path), world_tokenizer_dir, val, **columns))
    except ValueError as error:
        message = str(error)
        assert raised_in_our_code(error), message
        assert str(path) in message, message
        for text in case.expected:
            assert text in message, (text, message)
    else:
        assert case.may_load, f"no error for {case}"


# --- 3. scored completions: NaN/inf/null scores, blank responses, duplicates -> counted; pairs as a brute force says --
SCORE_COLUMNS = ["helpfulness", "verbosity"]
bad_scores = st.sampled_from([None, math.nan, math.inf, -math.inf])


@st.composite
def completion_rows(draw) -> list[dict]:
    """Several prompts, each with a few completions, some of them broken (in file order, prompts interleaved)."""
    rows = []
    for p in range(draw(st.integers(1, 5))):
        prompt = f"the day {WORDS[p]}"
        texts = []
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(["good", "good", "good", "bad_score", "huge_score", "blank", "null", "dup"]))
            text = draw(st.sampled_from(texts)) if kind == "dup" and texts else draw(words)
            texts.append(text)
            row = {"prompt": prompt, "response": text, **{c: draw(st.integers(0, 4)) for c in SCORE_COLUMNS}}
            if kind == "bad_score":
                row[draw(st.sampled_from(SCORE_COLUMNS))] = draw(bad_scores)
            elif kind == "huge_score":
                row[draw(st.sampled_from(SCORE_COLUMNS))] = draw(st.sampled_from([1e300, -1e300, 10**15]))
            elif kind == "blank":
                row["response"] = draw(blank)
            elif kind == "null":
                row[draw(st.sampled_from(["prompt", "response"]))] = None
            rows.append(row)
    return draw(st.permutations(rows))


def expected_scored(rows: list[dict], alpha: float, fmt: str) -> tuple[Counter, Counter, int]:
    """Brute force: (drops while grouping, drops while pairing, pairs kept) for best-vs-worst at α·h + (1−α)·v."""
    grouping, pairing, groups = Counter(), Counter(), {}
    for row in rows:
        prompt, response = row["prompt"], row["response"]
        if fmt == "csv":  # no nulls in CSV text: an empty cell is empty text
            prompt, response = prompt or "", response or ""
        scores = [row[c] for c in SCORE_COLUMNS]
        if prompt is None:
            grouping[NULL_PROMPT] += 1
        elif response is None or not response.strip():
            grouping[EMPTY_COMPLETION] += 1
        elif any(s is None or not math.isfinite(s) for s in scores):
            grouping[NULL_SCORE] += 1
        else:
            groups.setdefault(prompt, []).append((response, alpha * scores[0] + (1 - alpha) * scores[1]))
    kept = 0
    for completions in groups.values():
        if len(completions) < 2:
            grouping[TOO_FEW] += 1
            continue
        rewards = [r for _, r in completions]
        best, worst = rewards.index(max(rewards)), rewards.index(min(rewards))
        if math.isclose(rewards[best], rewards[worst], rel_tol=1e-12, abs_tol=1e-12):
            pairing[TIED] += 1
        elif completions[best][0] == completions[worst][0]:
            pairing[IDENTICAL] += 1
        else:
            kept += 1
    return grouping, pairing, kept


@FUZZ
@given(rows=completion_rows(), fmt=st.sampled_from(["jsonl", "csv", "parquet"]), alpha=st.sampled_from([0.0, 0.3, 1]))
def test_scored_completions_are_kept_or_counted(rows, fmt, alpha, workdir, world_tokenizer_dir, caplog):
    directory = fresh_dir(workdir)
    good = [
        {"prompt": "the day", "response": r, "helpfulness": s, "verbosity": s} for r, s in (("happy", 4), ("rain", 0))
    ]
    path = write_rows(directory / "train", good + rows, fmt)
    val = write_rows(directory / "val", good, "jsonl")
    dm = ScoredCompletionsDataModule(
        path=path, val_path=val, tokenizer=str(world_tokenizer_dir), score_columns=SCORE_COLUMNS, max_length=64,
        attribute_a="helpfulness", attribute_b="verbosity", train_alpha=alpha, val_alphas=[], batch_size=4,
    )  # fmt: skip
    grouping, pairing, kept = expected_scored(good + rows, alpha, fmt)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        batch = run_to_a_batch(dm)
    assert dm.drop_reasons.get("train source rows", {}) == dict(grouping)
    assert dm.drop_reasons.get("train", {}) == dict(pairing)
    assert len(dm.train_dataset) == kept and batch["input_ids"].shape[0] == 2 * min(4, kept)
    for reason, count in {**grouping, **pairing}.items():
        assert f"{reason}: {count}" in caplog.text


SCORED_BREAKAGES = ["text_score", "bool_score", "geometric_zero", "response_type", "prompt_type"]


@st.composite
def broken_scored_rows(draw, kind: str) -> tuple[list[dict], str, dict, list[str]]:
    """Good completions with one broken row: (rows, file format, DataModule options, texts the error must hold)."""
    n = draw(st.integers(2, 8))
    rows = [
        {
            "prompt": f"the day {WORDS[i % 3]}",
            "response": draw(words),
            **{c: draw(st.integers(1, 4)) for c in SCORE_COLUMNS},
        }
        for i in range(n)
    ]
    row = draw(st.integers(0, n - 1))
    fmt, options, column = draw(st.sampled_from(["jsonl", "csv"])), {}, draw(st.sampled_from(SCORE_COLUMNS))
    if kind == "text_score":
        rows[row][column] = draw(st.sampled_from(["high", "n/a?", "4 stars"]))
    elif kind == "bool_score":
        rows[row][column], fmt = draw(st.booleans()), "jsonl"
    elif kind == "geometric_zero":
        rows[row][column] = draw(st.sampled_from([0, -1, -0.5]))
        options = {"mixture_kind": "geometric"}
    else:
        column = "response" if kind == "response_type" else "prompt"
        rows[row][column], fmt = draw(st.sampled_from([3, 2.5, True, ["a"], {"text": "a"}])), "jsonl"
    return rows, fmt, options, [f"row {row}", repr(column)]


@pytest.mark.parametrize("kind", SCORED_BREAKAGES)
@settings(FUZZ, max_examples=15)
@given(data=st.data())
def test_broken_scored_rows_name_the_row_and_column(kind, data, workdir, world_tokenizer_dir):
    rows, fmt, options, expected = data.draw(broken_scored_rows(kind))
    event(fmt)
    directory = fresh_dir(workdir)
    path = write_rows(directory / "train", rows, fmt)
    val = write_rows(directory / "val", rows[:2], "jsonl")
    dm = ScoredCompletionsDataModule(
        path=path, val_path=val, tokenizer=str(world_tokenizer_dir), score_columns=SCORE_COLUMNS, max_length=64,
        attribute_a="helpfulness", attribute_b="verbosity", train_alpha=0.5, **options,
    )  # fmt: skip
    with pytest.raises(ValueError) as error:
        run_to_a_batch(dm)
    message = str(error.value)
    assert raised_in_our_code(error.value), message
    assert f"data.path={path}" in message, message
    for text in expected:
        assert text in message, (text, message)


# --- 4. chat messages: malformed message lists are errors, empty ones counted skips -----------------------------------
def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


MESSAGE_BREAKAGES = ["good", "null_content", "number_content", "no_role", "text_and_messages", "empty"]


@st.composite
def message_rows(draw, kind: str) -> tuple[list[dict], int, str, str]:
    """UltraFeedback-style rows (responses repeat the prompt) with one hostile row: (rows, its index, its fate --
    "" kept, a skip reason or "error" --, its column)."""
    rows = []
    for _ in range(draw(st.integers(1, 6))):
        prompt = draw(words)
        chosen, rejected = draw(distinct_responses())
        rows.append({"prompt": prompt, "chosen": [user(prompt), assistant(chosen)], "rejected": [assistant(rejected)]})
    row = draw(st.integers(0, len(rows) - 1))
    column = draw(st.sampled_from(["chosen", "rejected"]))
    fate = "error"
    if kind == "good":
        fate = ""
    elif kind == "null_content":
        rows[row][column] = [user("the day"), {"role": "assistant", "content": None}]
    elif kind == "number_content":
        rows[row][column] = [{"role": "assistant", "content": draw(st.integers(0, 9) | st.floats(allow_nan=False))}]
    elif kind == "no_role":
        rows[row][column] = [{"content": draw(words)}]
    elif kind == "text_and_messages":
        rows[row][column] = draw(words)
    else:
        rows[row][column], fate = [], EMPTY_RESPONSE
    return rows, row, fate, column


@pytest.mark.parametrize("kind", MESSAGE_BREAKAGES)
@settings(FUZZ, max_examples=15)
@given(data=st.data())
def test_chat_messages_are_rendered_counted_or_refused(kind, data, workdir, chat_tokenizer_dir):
    rows, row, fate, column = data.draw(message_rows(kind))
    directory = fresh_dir(workdir)
    val = [{"prompt": "the day", "chosen": [assistant("happy")], "rejected": [assistant("gloomy")]}]
    dm = pairwise(
        write_rows(directory / "train", rows, "jsonl"), chat_tokenizer_dir, write_rows(directory / "v", val, "jsonl")
    )
    if fate == "error":
        with pytest.raises(ValueError) as error:
            run_to_a_batch(dm)
        assert raised_in_our_code(error.value) and f"row {row}" in str(error.value), str(error.value)
        assert repr(column) in str(error.value) or "one of chosen/rejected" in str(error.value), str(error.value)
        return
    if fate and len(rows) == 1:  # nothing left to train on: an error that lists the reasons
        with pytest.raises(ValueError, match=f"no pair is left .*{fate}: 1"):
            run_to_a_batch(dm)
        return
    run_to_a_batch(dm)
    assert dm.drop_reasons.get("train", {}) == ({fate: 1} if fate else {})
    assert dm.templated and len(dm.train_dataset) == len(rows) - bool(fate)


# --- 5. mixtures: anything that is not a point of the simplex is an error naming the YAML key -------------------------
#: any number, and numbers with 3 decimals (0.251 is not 0.25, but both print as 0.25)
numbers = (
    st.floats(allow_nan=True, allow_infinity=True)
    | st.floats(0, 1).map(lambda x: round(x, 3))
    | st.integers(-2, 3)
    | st.booleans()
    | st.none()
    | anything
)
mixture_entries = (
    numbers
    | st.lists(numbers, max_size=7)
    | st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, 0.1, 0.2, 0.3, 0.7, 0.9]), min_size=5, max_size=5)
    | st.dictionaries(st.sampled_from([*ATTRIBUTES, "rage"]), numbers | st.sampled_from([0.5, 0.25, 1.0]), max_size=5)
)


def is_weight(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def expected_weights(entry) -> list[float] | None:
    """An independent reading of one YAML mixture entry (α on anger/fear, K weights, or a mapping); None if invalid."""
    if isinstance(entry, dict):
        if any(name not in ATTRIBUTES for name in entry):
            return None
        entry = [entry.get(name, 0.0) for name in ATTRIBUTES]
    if isinstance(entry, list):
        ok = len(entry) == len(ATTRIBUTES) and all(is_weight(w) for w in entry) and abs(sum(entry) - 1) <= 1e-6
        return [float(w) for w in entry] if ok else None
    if is_weight(entry) and entry <= 1:
        return [0.0, 0.0, 0.0, float(entry), 1.0 - entry]
    return None


@settings(FUZZ, max_examples=500)
@given(entries=st.lists(mixture_entries, min_size=1, max_size=4))
def test_mixtures_are_simplex_points_or_errors_naming_the_key(entries):
    readings = [expected_weights(entry) for entry in entries]
    bad = [i for i, weights in enumerate(readings) if weights is None]
    try:
        dm = AttributeWorldDataModule(attribute_a="anger", attribute_b="fear", train_alpha=0.1, val_mixtures=entries)
    except ValueError as error:
        assert bad or "same name" in str(error), str(error)
        key = f"data.val_mixtures[{bad[0]}]" if bad else "data.val_mixtures["
        assert key in str(error), (key, str(error))
        return
    assert not bad, f"accepted {[entries[i] for i in bad]}"
    names = [m.name for m in dm.val_mixtures]
    assert len(set(names)) == len(names), names  # one validation set per name: none is overwritten
    for weights in readings:
        assert any(np.allclose(weights, m.weights) for m in dm.val_mixtures)
    for mixture in dm.val_mixtures:
        assert all(w >= 0 for w in mixture.weights) and abs(sum(mixture.weights) - 1) <= 1e-6


@settings(FUZZ, max_examples=200)
@given(shares=st.lists(numbers | st.sampled_from([0.5, 0.25, 0.75]), max_size=3))
def test_training_shares_are_a_simplex_point_or_an_error(shares):
    valid = len(shares) == 2 and all(is_weight(s) for s in shares) and abs(sum(shares) - 1) <= 1e-6
    try:
        dm = AttributeWorldDataModule(train_mixtures=[0.1, 0.9], train_shares=shares)
    except ValueError as error:
        assert not valid and "data.train_shares" in str(error), str(error)
        return
    assert valid and dm.train_shares == [float(s) for s in shares]


# --- 6. group ids: names or integers >= 0; a null or NaN is an error naming the row ----------------------------------
group_values = st.integers(0, 3) | st.integers(-3, -1) | st.sampled_from(["web", "books", 1.5, math.nan, None, True])


@FUZZ
@given(groups=st.lists(group_values, min_size=1, max_size=8))
def test_group_ids_are_consistent_or_an_error_naming_the_row(groups, workdir, world_tokenizer_dir):
    directory = fresh_dir(workdir)
    rows = [{**GOOD, "source": g} for g in groups]
    dm = pairwise(
        write_rows(directory / "train", rows, "jsonl"),
        world_tokenizer_dir,
        write_rows(directory / "v", [GOOD], "jsonl"),
        group_column="source",
    )
    missing = [i for i, g in enumerate(groups) if g is None or (isinstance(g, float) and math.isnan(g))]
    if missing:
        with pytest.raises(ValueError, match=rf"row {missing[0]}: data.group_column 'source' is null or NaN"):
            run_to_a_batch(dm)
        return
    batch = run_to_a_batch(dm)
    ids = list(dm.train_dataset["group"])
    assert len(ids) == len(groups) and batch["columns"]["group"].shape[0] == min(4, len(groups))
    if all(isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in groups):
        assert ids == groups  # integer ids pass through
    else:  # names: one id per distinct value, 0..n-1 (a column of ints and floats is all floats: 0 is 0.0)
        numeric = all(isinstance(g, (int, float)) and not isinstance(g, bool) for g in groups)
        keys = [float(g) if numeric else repr(g) for g in groups]
        assert sorted(set(ids)) == list(range(len(set(keys))))
        assert all((ids[i] == ids[j]) == (keys[i] == keys[j]) for i in range(len(ids)) for j in range(len(ids)))


# --- 7. duplicate prompts: kept; held-out pairs whose prompt also trains are counted and logged ----------------------
@FUZZ
@given(prompts=st.lists(st.sampled_from(["the day", "the night", "a walk", "the river road"]), min_size=2, max_size=20))
def test_held_out_pairs_sharing_a_training_prompt_are_counted(prompts, workdir, world_tokenizer_dir, caplog):
    rows = [
        {"prompt": p, "chosen": "happy sunny", "rejected": f"gloomy {WORDS[i % 50]}"} for i, p in enumerate(prompts)
    ]
    dm = pairwise(write_rows(fresh_dir(workdir) / "train", rows, "jsonl"), world_tokenizer_dir, None, val_fraction=0.3)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rdpo_lightning.data.pairwise"):
        run_to_a_batch(dm)
    assert len(dm.train_dataset) + len(dm.val_datasets["held_out"]) == len(rows)  # duplicates are all kept
    seen = {tuple(pair["prompt_ids"]) for pair in dm.train_dataset}
    shared = sum(tuple(pair["prompt_ids"]) in seen for pair in dm.val_datasets["held_out"])
    assert dm.shared_prompts == shared
    held_out = len(dm.val_datasets["held_out"])
    assert (f"held_out: {shared} of {held_out} held-out pairs share their prompt" in caplog.text) == (shared > 0)
