"""Pairwise data sets from tiny local files in the real schemas (UltraFeedback binarized, HH-RLHF, plain pairs),
through the same loading code users take: chat templates, dropped-pair counts, malformed rows."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import pytest

from rdpo_lightning.data import PairwisePreferenceDataModule
from rdpo_lightning.data.chat import NO_SHARED_PROMPT
from rdpo_lightning.data.rows import EMPTY_RESPONSE, IDENTICAL, MISSING_VALUE
from rdpo_lightning.data.tokenize import NO_ROOM
from rdpo_lightning.data.tokenizer import load_tokenizer

LOGGER = "rdpo_lightning.data.datamodule"


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def ultrafeedback_rows(n: int) -> list[dict]:
    """UltraFeedback-binarized schema: a text prompt; chosen/rejected repeat it as the first chat message."""
    prompts = ["the day", "a walk in the city", "the river road", "a letter", "the garden at night"]
    rows = []
    for i in range(n):
        prompt = prompts[i % len(prompts)]
        rows.append(
            {
                "prompt": prompt,
                "prompt_id": f"id{i}",
                "chosen": [user(prompt), assistant("happy sunny " * (1 + i % 3))],
                "rejected": [user(prompt), assistant("gloomy rain")],
                "score_chosen": 8.0,
                "score_rejected": 3.0,
            }
        )
    return rows


def datamodule(path: str, tokenizer: Path, **kwargs) -> PairwisePreferenceDataModule:
    kwargs = {"max_length": 32, "max_prompt_length": 16, "batch_size": 4, **kwargs}
    return PairwisePreferenceDataModule(path=path, tokenizer=str(tokenizer), **kwargs)


def test_ultrafeedback_messages_go_through_the_chat_template(tmp_path, chat_tokenizer_dir):
    train = write_jsonl(tmp_path / "train_prefs.jsonl", ultrafeedback_rows(10))
    val = write_jsonl(tmp_path / "test_prefs.jsonl", ultrafeedback_rows(4))
    dm = datamodule(train, chat_tokenizer_dir, val_path=val, val_fraction=0)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.templated and dm.val_names == ["test_prefs"] and len(dm.train_dataset) == 10
    tokenizer = load_tokenizer(chat_tokenizer_dir)
    for row, source in zip(dm.train_dataset, ultrafeedback_rows(10), strict=True):
        for key in ("chosen", "rejected"):
            conversation = tokenizer.apply_chat_template(source[key], tokenize=False)
            expected = tokenizer(conversation, add_special_tokens=False)["input_ids"]
            assert row["prompt_ids"] + row[f"{key}_ids"] == expected  # one template pass, no extra BOS/EOS
        generation = tokenizer.apply_chat_template([user(source["prompt"])], tokenize=False, add_generation_prompt=True)
        assert row["prompt_ids"] == tokenizer(generation, add_special_tokens=False)["input_ids"]
        assert row["chosen_ids"][-1] == tokenizer.eos_token_id  # the template closes the turn
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 8


def test_messages_without_a_chat_template_are_an_error(tmp_path, world_tokenizer_dir):
    train = write_jsonl(tmp_path / "train.jsonl", ultrafeedback_rows(6))
    with pytest.raises(ValueError, match="holds chat messages but tokenizer .* has no chat template"):
        datamodule(train, world_tokenizer_dir).setup()


def test_hh_rlhf_conversations_split_at_the_last_assistant_turn(tmp_path, world_tokenizer_dir):
    human = "\n\nHuman: the day\n\nAssistant: happy\n\nHuman: the night"
    rows = [
        {"chosen": f"{human}\n\nAssistant: sunny bright", "rejected": f"{human}\n\nAssistant: gloomy rain"},
        {"chosen": f"{human}\n\nAssistant: laugh", "rejected": f"{human}\n\nAssistant: weep"},
        {"chosen": f"{human}\n\nAssistant: smile", "rejected": "\n\nHuman: the night\n\nAssistant: tears"},
    ] * 4
    path = tmp_path / "hh.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    dm = datamodule(
        str(path), world_tokenizer_dir, prompt_column=None, prompt_delimiter="\n\nAssistant:", val_fraction=0.25
    )
    dm.setup()
    tokenizer = load_tokenizer(world_tokenizer_dir)
    first = tokenizer(f"{human}\n\nAssistant:")["input_ids"]
    assert all(row["prompt_ids"] == first for row in dm.train_dataset)
    responses = {tuple(row["chosen_ids"]) for row in dm.train_dataset}
    assert responses <= {tuple(tokenizer(t)["input_ids"] + [tokenizer.eos_token_id]) for t in ("sunny bright", "laugh")}
    total_skipped = dm.drop_reasons["train"].get(NO_SHARED_PROMPT, 0) + dm.drop_reasons["held_out"].get(
        NO_SHARED_PROMPT, 0
    )
    assert total_skipped == 4  # the four rows whose rejected conversation starts differently


def test_over_long_rows_are_dropped_and_counted_exactly(tmp_path, world_tokenizer_dir, caplog):
    long_prompt = " ".join(["the city"] * 20)  # 40 tokens: no room within max_length=16
    rows = [
        {"question": long_prompt if i % 4 == 0 else "the day", "good": "happy " * 30, "bad": "gloomy"}
        for i in range(20)
    ]  # 5 over-long prompts; long responses are cut, not dropped
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    val = write_jsonl(tmp_path / "val.jsonl", rows[:4])
    columns = {"prompt_column": "question", "chosen_column": "good", "rejected_column": "bad"}
    columns.update(val_fraction=0)  # val.jsonl is the only validation set
    dm = datamodule(train, world_tokenizer_dir, val_path=val, max_length=16, max_prompt_length=None, **columns)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        dm.prepare_data()
        dm.setup("fit")
        dm.setup("validate")
    assert len(dm.train_dataset) == 15 and dm.dropped["train"] == 5
    assert dm.drop_reasons["train"] == {NO_ROOM: 5}
    assert dm.dropped["val"] == 1
    assert all(len(r["prompt_ids"]) + len(r["chosen_ids"]) == 16 for r in dm.train_dataset)  # cut to max_length
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert sum("train: dropped 5 of 20 pairs" in m for m in messages) == 1  # logged once, with the count
    assert any("max_length=16" in m for m in messages)

    dm = datamodule(train, world_tokenizer_dir, val_path=val, max_length=16, max_prompt_length=8, **columns)
    dm.setup()
    assert dm.dropped["train"] == 0  # prompts kept to their last 8 tokens instead
    assert all(len(r["prompt_ids"]) <= 8 for r in dm.train_dataset)


def test_malformed_rows_are_counted_skips(tmp_path, world_tokenizer_dir, caplog):
    good = {"prompt": "the day", "chosen": "happy", "rejected": "gloomy"}
    rows = [good] * 6 + [
        {"prompt": "the day", "chosen": None, "rejected": "gloomy"},
        {"prompt": "the day", "chosen": "   ", "rejected": "gloomy"},
        {"prompt": "the day", "chosen": "happy", "rejected": ""},
        {"prompt": "the day", "chosen": "same words", "rejected": "same words"},
    ]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    dm = datamodule(train, world_tokenizer_dir, val_path=write_jsonl(tmp_path / "val.jsonl", [good]), val_fraction=0)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        dm.setup()
    assert len(dm.train_dataset) == 6
    assert dm.drop_reasons["train"] == {MISSING_VALUE: 1, EMPTY_RESPONSE: 2, IDENTICAL: 1}
    assert "train: dropped 4 of 10 pairs" in caplog.text


def test_schema_problems_are_errors_naming_the_column(tmp_path, world_tokenizer_dir):
    rows = [{"prompt": "the day", "good": "happy", "rejected": "gloomy"}] * 4
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['chosen'\] \(set by .*data.chosen_column"):
        datamodule(path, world_tokenizer_dir).setup()
    rows = [{"prompt": "the day", "chosen": "happy", "rejected": 3}] * 4
    path = write_jsonl(tmp_path / "b.jsonl", rows)
    with pytest.raises(ValueError, match=r"row \d+: column 'rejected' \(data.rejected_column\) holds int"):
        datamodule(path, world_tokenizer_dir).setup()
    with pytest.raises(ValueError, match=r"data.path=.*only split is 'train'; got split 'train_prefs'"):
        datamodule(path, world_tokenizer_dir, train_split="train_prefs").setup()


def test_group_column_names_become_group_ids(tmp_path, world_tokenizer_dir):
    rows = [
        {"prompt": "the day", "chosen": "happy", "rejected": "gloomy", "source": ["web", "books", "chat"][i % 3]}
        for i in range(9)
    ]
    path = write_jsonl(tmp_path / "g.jsonl", rows)
    dm = datamodule(path, world_tokenizer_dir, group_column="source", val_per_group=False)  # the unstratified split
    dm.tokenizer = dm.build_tokenizer()
    train, _ = dm.build_splits()
    assert dm.group_names == ["books", "chat", "web"]
    names = {"web": 2, "books": 0, "chat": 1}
    source = datasets.load_dataset("json", data_files=str(tmp_path / "g.jsonl"), split="train")
    split = source.train_test_split(test_size=0.05, seed=0)["train"]
    assert list(train["group"]) == [names[s] for s in split["source"]]
