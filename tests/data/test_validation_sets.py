"""Named validation sets of pairwise data (``rdpo_lightning/data/validation_sets.py``): ``data.val_path`` as a path, a
list or a mapping beside the held-out split; one set per group of the held-out split; errors naming the key."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from rdpo_lightning.data import PairwisePreferenceDataModule
from rdpo_lightning.data.tokenizer import load_tokenizer
from rdpo_lightning.data.validation_sets import named_val_paths
from rdpo_lightning.errors import InputError

WORDS = ["morning", "train", "city", "road", "river", "garden", "letter", "window", "night", "day"]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def pairs(count: int, start: int = 0, **columns) -> list[dict]:
    """Rows with distinct prompts (two words from WORDS), so a tokenised pair says which row it came from."""
    return [
        {"prompt": f"{WORDS[i // 10]} {WORDS[i % 10]}", "chosen": "happy", "rejected": "gloomy", **columns}
        for i in range(start, start + count)
    ]


def datamodule(path: str, tokenizer: Path, **kwargs) -> PairwisePreferenceDataModule:
    dm = PairwisePreferenceDataModule(path=path, tokenizer=str(tokenizer), max_length=16, **kwargs)
    dm.setup()
    return dm


def prompts(dataset, tokenizer) -> list[str]:
    return sorted(tokenizer.decode(row["prompt_ids"], skip_special_tokens=True).strip() for row in dataset)


def test_val_path_names_sets_by_stem_or_by_mapping():
    assert named_val_paths(None) == {}
    assert named_val_paths("data/shifted.jsonl") == {"shifted": "data/shifted.jsonl"}
    assert named_val_paths(["a/x.jsonl", "b/y.parquet", "hub/org/name"]) == {
        "x": "a/x.jsonl",
        "y": "b/y.parquet",
        "name": "hub/org/name",
    }
    assert named_val_paths({"other users": "x.jsonl"}) == {"other users": "x.jsonl"}
    with pytest.raises(InputError, match=r"data.val_path: 'a/x.jsonl' and 'b/x.csv' would both be named 'x'"):
        named_val_paths(["a/x.jsonl", "b/x.csv"])
    with pytest.raises(InputError, match=r"data.val_path\[1\] must be a path"):
        named_val_paths(["a.jsonl", 3])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_fraction": 0}, "data.val_fraction is 0 and there is no data.val_split or data.val_path"),
        ({"val_fraction": 1.0, "val_path": "x.jsonl"}, r"data.val_fraction must lie in \[0, 1\)"),
        ({"val_path": {"worst_case": "x.jsonl"}}, "a validation set may not be named 'worst_case'"),
        ({"val_path": "dir/held_out.jsonl"}, "data.val_name and data.val_path\\['held_out'\\] both name"),
    ],
)
def test_bad_validation_sets_are_one_line_errors_naming_the_key(kwargs, message, world_tokenizer_dir):
    with pytest.raises(ValueError, match=message):
        PairwisePreferenceDataModule(path="p.jsonl", tokenizer=str(world_tokenizer_dir), **kwargs)


def test_val_path_sets_come_after_the_held_out_split_which_stays(tmp_path, world_tokenizer_dir, caplog):
    train = write_jsonl(tmp_path / "train.jsonl", pairs(20))
    first = write_jsonl(tmp_path / "first.jsonl", pairs(3, start=40))
    second = write_jsonl(tmp_path / "second.jsonl", pairs(5, start=60))
    tokenizer = load_tokenizer(world_tokenizer_dir)
    with caplog.at_level(logging.INFO):
        dm = datamodule(train, world_tokenizer_dir, val_path={"users_b": second, "users_a": first}, val_fraction=0.25)
    assert dm.val_names == ["held_out", "users_b", "users_a"]  # in-distribution first, then the mapping's order
    said = f"validation sets: held_out (5 pairs, data.val_fraction=0.25 of data.path={train}), users_b (5 pairs, "
    assert said in caplog.text and f"users_a (3 pairs, data.val_path={first})" in caplog.text  # one line says so
    assert prompts(dm.val_datasets["users_b"], tokenizer) == sorted(r["prompt"] for r in pairs(5, start=60))
    assert prompts(dm.val_datasets["users_a"], tokenizer) == sorted(r["prompt"] for r in pairs(3, start=40))
    assert len(dm.val_datasets["held_out"]) == 5 and len(dm.train_dataset) == 15
    held_and_trained = prompts(dm.val_datasets["held_out"], tokenizer) + prompts(dm.train_dataset, tokenizer)
    assert sorted(held_and_trained) == sorted(r["prompt"] for r in pairs(20))  # each training row exactly once

    dm = datamodule(train, world_tokenizer_dir, val_path=[first, second], val_fraction=0)
    assert dm.val_names == ["first", "second"] and len(dm.train_dataset) == 20  # no held-out split: all rows train


def test_each_group_of_the_held_out_split_is_a_set(tmp_path, world_tokenizer_dir, caplog):
    groups = [10] * 10 + [2] * 5 + ["x"] * 4 + [1]  # group 1 has a single row: it can only train
    rows = [{**row, "g": group} for row, group in zip(pairs(20), groups, strict=True)]
    rows = [{**row, "g": str(row["g"])} for row in rows]  # one column type: names that read as numbers, and 'x'
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    tokenizer = load_tokenizer(world_tokenizer_dir)
    with caplog.at_level(logging.WARNING, logger="rdpo_lightning.data.pairwise"):
        dm = datamodule(train, world_tokenizer_dir, group_column="g", val_fraction=0.2)
    assert "groups ['1'] have one pair each, kept for training" in caplog.text
    assert dm.val_names == ["held_out", "group=2", "group=10", "group=x"]  # numbers by value, then names
    by_group = {f"group={g}": {r["prompt"] for r in rows if r["g"] == g} for g in ("2", "10", "x")}
    held_out = prompts(dm.val_datasets["held_out"], tokenizer)
    for name, members in by_group.items():
        in_set = prompts(dm.val_datasets[name], tokenizer)
        assert len(in_set) == {"group=2": 1, "group=10": 2, "group=x": 1}[name]  # ceil(0.2 * size)
        assert set(in_set) <= members and set(in_set) == set(held_out) & members
    assert sorted(held_out) == sorted(p for name in by_group for p in prompts(dm.val_datasets[name], tokenizer))
    assert sorted(held_out + prompts(dm.train_dataset, tokenizer)) == sorted(r["prompt"] for r in rows)
    assert dm.group_names == ["1", "10", "2", "x"] and sorted(set(dm.train_dataset["group"])) == [0, 1, 2, 3]

    dm = datamodule(train, world_tokenizer_dir, group_column="g", val_fraction=0.2, val_per_group=False)
    assert dm.val_names == ["held_out"]


def test_a_val_split_without_groups_names_the_keys(tmp_path, world_tokenizer_dir):
    directory = tmp_path / "source"
    directory.mkdir()
    write_jsonl(directory / "train.jsonl", pairs(8, g="a"))
    write_jsonl(directory / "test.jsonl", pairs(4, start=20))
    # datasets reads a directory's files with one schema: the test file's missing column is nulls there
    with pytest.raises(ValueError, match=r"held_out .*row 0: data.group_column 'g' is null .*data.val_per_group false"):
        datamodule(str(directory), world_tokenizer_dir, val_split="test", group_column="g")
    dm = datamodule(str(directory), world_tokenizer_dir, val_split="test", group_column="g", val_per_group=False)
    assert dm.val_names == ["held_out"] and set(dm.train_dataset["group"]) == {0}
    # a group the training rows never had is a set of its own: validation on users the model was not trained for
    write_jsonl(directory / "test.jsonl", pairs(4, start=20, g="b"))
    dm = datamodule(str(directory), world_tokenizer_dir, val_split="test", group_column="g")
    assert dm.val_names == ["held_out", "group=b"] and len(dm.val_datasets["group=b"]) == 4


def test_the_group_column_may_be_the_prompt_column(tmp_path, world_tokenizer_dir):
    """Grouping by the prompt itself (e.g. one group per task prompt) selects that column twice: the group is a copy
    (it was datasets' ``Field "group" exists 2 times``)."""
    rows = [{**row, "chosen": "happy", "rejected": "gloomy"} for row in pairs(4)] * 3
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    dm = datamodule(train, world_tokenizer_dir, group_column="prompt", val_fraction=0.25)
    prompts_seen = sorted({row["prompt"] for row in rows})
    assert dm.group_names == prompts_seen
    assert dm.val_names == ["held_out", *(f"group={p}" for p in prompts_seen)]
    tokenizer = load_tokenizer(world_tokenizer_dir)
    for row in dm.train_dataset:  # each pair's group id is its own prompt's index
        prompt = tokenizer.decode(row["prompt_ids"], skip_special_tokens=True).strip()
        assert dm.group_names[row["group"]] == prompt
