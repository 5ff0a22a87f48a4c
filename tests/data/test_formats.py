"""The public pairwise layouts load on the first try: a few rows written in exactly each public data set's column
structure, through the real DataModule; the prompt/response split checked against the rule stated in docs/data.md,
computed here from the rows themselves."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from rdpo_lightning.data import PairwisePreferenceDataModule
from rdpo_lightning.data.chat import NO_SHARED_TURNS
from rdpo_lightning.data.formats import HH_ASSISTANT
from rdpo_lightning.data.rows import EMPTY_RESPONSE
from rdpo_lightning.data.tokenizer import load_tokenizer
from rdpo_lightning.errors import InputError


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def message(role: str, text: str) -> dict:
    return {"content": text, "role": role}  # trl-lib's key order


def trl_ultrafeedback_rows(n: int) -> list[dict]:
    """``trl-lib/ultrafeedback_binarized``: chosen/rejected message lists sharing the user turn, no prompt column;
    the second of every three rows is multi-turn (the shared prefix ends with the second user turn)."""
    rows = []
    for i in range(n):
        turns = [message("user", f"the day {['river', 'road', 'garden'][i % 3]}")]
        if i % 3 == 1:
            turns += [message("assistant", "sunny"), message("user", "the night")]
        rows.append(
            {
                "chosen": [*turns, message("assistant", "happy sunny " * (1 + i % 2))],
                "rejected": [*turns, message("assistant", "gloomy rain")],
                "score_chosen": 8.5,
                "score_rejected": 4.0,
            }
        )
    return rows


def hh_rows(n: int) -> list[dict]:
    """``Anthropic/hh-rlhf``: whole transcripts in ``chosen`` and ``rejected``, no prompt column; the two answers of
    every row start with the same words, which a shared-prefix rule would move into the prompt."""
    rows = []
    for i in range(n):
        talk = f"\n\nHuman: the day {['river', 'road'][i % 2]}"
        if i % 2:
            talk += "\n\nAssistant: happy\n\nHuman: the night"
        rows.append(
            {
                "chosen": f"{talk}\n\nAssistant: the city happy sunny",
                "rejected": f"{talk}\n\nAssistant: the city gloomy rain",
            }
        )
    return rows


def datamodule(path: str, tokenizer: Path, **kwargs) -> PairwisePreferenceDataModule:
    kwargs = {"max_length": 48, "batch_size": 4, "val_fraction": 0.25, **kwargs}
    return PairwisePreferenceDataModule(path=path, tokenizer=str(tokenizer), **kwargs)


def texts(dm: PairwisePreferenceDataModule):
    """The rendered (untokenised) training and validation splits."""
    dm.tokenizer = dm.build_tokenizer()
    train, vals = dm.build_splits()
    return train, vals


def test_implicit_conversational_prompt_is_the_shared_messages(tmp_path, chat_tokenizer_dir):
    rows = trl_ultrafeedback_rows(12)
    dm = datamodule(write_jsonl(tmp_path / "train.jsonl", rows), chat_tokenizer_dir)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.templated and dm.layouts["train"].startswith("implicit prompt, conversational: prompt = the messages")
    tokenizer = load_tokenizer(chat_tokenizer_dir)
    expected = set()
    for row in rows:  # the prompt: every message before the answers, with the generation prompt
        prompt = tokenizer.apply_chat_template(row["chosen"][:-1], tokenize=False, add_generation_prompt=True)
        chosen = tokenizer.apply_chat_template(row["chosen"], tokenize=False)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        expected.add((tuple(ids), tuple(tokenizer(chosen, add_special_tokens=False)["input_ids"][len(ids) :])))
    got = {(tuple(r["prompt_ids"]), tuple(r["chosen_ids"])) for r in dm.train_dataset}
    assert got <= expected and len(dm.train_dataset) == 9
    assert any(len(r["prompt_ids"]) > 10 for r in dm.train_dataset)  # a multi-turn prompt kept its earlier turns


def test_hh_rlhf_prompt_ends_at_the_last_assistant_turn_without_settings(tmp_path, world_tokenizer_dir):
    rows = hh_rows(8)
    dm = datamodule(write_jsonl(tmp_path / "hh.jsonl", rows), world_tokenizer_dir, val_fraction=0.5)
    train, vals = texts(dm)
    assert dm.layouts["train"] == (
        "implicit prompt, HH-RLHF text: prompt = 'chosen' up to and including its last '\\n\\nAssistant:', "
        "responses 'chosen' / 'rejected' after it"
    )
    expected = {
        (r["chosen"][: r["chosen"].rindex(HH_ASSISTANT) + len(HH_ASSISTANT)], " the city happy sunny") for r in rows
    }
    for split in (train, vals["held_out"]):
        assert {(p, c) for p, c in zip(split["prompt"], split["chosen"], strict=True)} <= expected
        assert set(split["rejected"]) == {" the city gloomy rain"}  # the shared words stay in the responses
    # with prompt_column: null explicitly, the same: the delimiter, not the shared characters
    train_null, _ = texts(datamodule(str(tmp_path / "hh.jsonl"), world_tokenizer_dir, prompt_column=None))
    assert set(train_null["rejected"]) == {" the city gloomy rain"}


def test_trl_text_layouts_explicit_and_implicit(tmp_path, world_tokenizer_dir):
    explicit = [{"prompt": "the day", "chosen": " happy sunny", "rejected": " gloomy rain"}] * 4
    train, _ = texts(datamodule(write_jsonl(tmp_path / "explicit.jsonl", explicit), world_tokenizer_dir))
    assert set(zip(train["prompt"], train["chosen"], strict=True)) == {("the day", " happy sunny")}
    implicit = [{"chosen": "the day is happy", "rejected": "the day is gloomy"}] * 4
    path = write_jsonl(tmp_path / "implicit.jsonl", implicit)
    dm = datamodule(path, world_tokenizer_dir, prompt_column=None)
    train, _ = texts(dm)  # TRL's rule: the shared characters, the space before the first difference left out
    assert set(zip(train["prompt"], train["chosen"], train["rejected"], strict=True)) == {
        ("the day is", " happy", " gloomy")
    }
    assert dm.layouts["train"].startswith("implicit prompt, text: prompt = the characters")
    # without prompt_column: null, a text layout that is not HH is not guessed: the error names the key to set
    with pytest.raises(InputError, match=r"missing column\(s\) \['prompt'\] \(set by data.prompt_column\).*set "
                       r"data.prompt_column: null"):  # fmt: skip
        texts(datamodule(path, world_tokenizer_dir))


def test_explicit_conversational_prompt(tmp_path, chat_tokenizer_dir):
    rows = [
        {
            "prompt": [message("user", "the day")],
            "chosen": [message("assistant", "happy sunny")],
            "rejected": [message("assistant", "gloomy rain")],
        }
    ] * 4
    dm = datamodule(write_jsonl(tmp_path / "c.jsonl", rows), chat_tokenizer_dir)
    train, _ = texts(dm)
    tokenizer = load_tokenizer(chat_tokenizer_dir)
    prompt = tokenizer.apply_chat_template(rows[0]["prompt"], tokenize=False, add_generation_prompt=True)
    whole = tokenizer.apply_chat_template(rows[0]["prompt"] + rows[0]["chosen"], tokenize=False)
    assert set(zip(train["prompt"], train["chosen"], strict=True)) == {(prompt, whole[len(prompt) :])}
    assert dm.layouts["train"] == "explicit prompt, conversational: prompt 'prompt', responses 'chosen' / 'rejected'"


def test_empty_assistant_message_is_dropped_like_empty_text(tmp_path, chat_tokenizer_dir):
    rows = trl_ultrafeedback_rows(8)
    rows[0]["chosen"][-1]["content"] = ""
    rows[1]["rejected"][-1]["content"] = "  "
    rows[2]["rejected"] = rows[2]["rejected"][:-1] + [message("user", "again")]  # no shared turns before an answer
    val = write_jsonl(tmp_path / "val.jsonl", trl_ultrafeedback_rows(2))
    dm = datamodule(write_jsonl(tmp_path / "train.jsonl", rows), chat_tokenizer_dir, val_path=val, val_fraction=0)
    dm.setup()
    assert dm.drop_reasons["train"] == {EMPTY_RESPONSE: 2, NO_SHARED_TURNS: 1} and len(dm.train_dataset) == 5
    text_rows = [{"prompt": "the day", "chosen": "", "rejected": "gloomy"}] + [
        {"prompt": "the day", "chosen": "happy", "rejected": "gloomy"}
    ] * 3
    text = write_jsonl(tmp_path / "text.jsonl", text_rows)
    dm = datamodule(text, chat_tokenizer_dir, val_path=text, val_fraction=0)
    dm.setup()
    assert dm.drop_reasons["train"] == {EMPTY_RESPONSE: 1}  # the same reason, counted the same way


@pytest.mark.parametrize("kind", ["dataset", "dataset_dict"])
def test_save_to_disk_directories(tmp_path, chat_tokenizer_dir, kind):
    train = datasets.Dataset.from_list(trl_ultrafeedback_rows(8), split="train_prefs")
    test = datasets.Dataset.from_list(trl_ultrafeedback_rows(3), split="test_prefs")
    directory = tmp_path / kind
    if kind == "dataset":
        train.save_to_disk(str(directory))
        dm = datamodule(str(directory), chat_tokenizer_dir, train_split="train_prefs")
        texts(dm)
        assert len(dm._load()[0]) == 6  # 25% held out
        with pytest.raises(InputError, match=r"is a saved Dataset \(saved as split 'train_prefs'\), whose only split"):
            texts(datamodule(str(directory), chat_tokenizer_dir, train_split="test"))
    else:
        datasets.DatasetDict({"train_prefs": train, "test_prefs": test}).save_to_disk(str(directory))
        dm = datamodule(str(directory), chat_tokenizer_dir, train_split="train_prefs", val_split="test_prefs")
        train_split, vals = texts(dm)
        assert len(train_split) == 8 and len(vals["held_out"]) == 3
        with pytest.raises(InputError, match=r"no split 'train' .* its splits are \['train_prefs', 'test_prefs'\]"):
            texts(datamodule(str(directory), chat_tokenizer_dir))
