"""Errors in the data's content, and optimizer hyper-parameters, end ``rdpo`` with one line naming the file, row,
column and YAML key (no traceback); plus the public formats through the real CLI: a ``save_to_disk`` DatasetDict in
TRL's implicit-prompt conversational layout fitted, HH-RLHF transcripts validated, each with its layout line."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import datasets
import pytest

from rdpo_lightning.cli import main
from rdpo_lightning.data.tokenizer import load_tokenizer
from tests.cli.test_input_errors import own_model_args, write_pairs
from tests.conftest import CHAT_TEMPLATE

NOUNS = ["morning", "train", "city", "road", "river", "garden", "letter", "window"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def conversations(count: int) -> list[dict]:
    """``trl-lib/ultrafeedback_binarized`` rows: shared user turn, no prompt column; every fifth chosen answer is
    longer than a 64-position model can take (without the context check, an IndexError in the reference pass)."""
    rows = []
    for i in range(count):
        user = {"content": f"the {NOUNS[i % 8]} {NOUNS[(i // 8) % 8]}", "role": "user"}
        rows.append(
            {
                "chosen": [user, {"content": "happy laugh " * (1 + i % 3 + 40 * (i % 5 == 0)), "role": "assistant"}],
                "rejected": [user, {"content": "grief tears", "role": "assistant"}],
                "score_chosen": 7.0,
                "score_rejected": 2.0,
            }
        )
    return rows


def scored_config(path: Path, model_dir: Path, root: Path) -> Path:
    config = {
        "trainer": {"accelerator": "cpu", "max_steps": 1, "default_root_dir": str(root), "logger": False},
        "model": {"model": str(model_dir)},
        "data": {
            "class_path": "rdpo_lightning.data.ScoredCompletionsDataModule",
            "init_args": {
                "path": str(path),
                "tokenizer": str(model_dir),
                "score_columns": ["helpfulness", "verbosity"],
                "attribute_a": "helpfulness",
                "attribute_b": "verbosity",
                "max_length": 32,
            },
        },
    }
    file = root / "scored.yaml"
    file.write_text(json.dumps(config))
    return file


def bad_data(kind: str, tmp_path: Path) -> tuple[Path, list[str]]:
    """A file with one kind of bad content, and any extra CLI arguments it needs."""
    pairs = [json.loads(line) for line in write_pairs(tmp_path / "good.jsonl").read_text().splitlines()]
    if kind == "number":
        pairs[5]["rejected"] = 3
        return write_jsonl(tmp_path / "pairs.jsonl", pairs), []
    if kind == "messages":
        return write_jsonl(tmp_path / "pairs.jsonl", conversations(12)), []
    if kind == "all_dropped":
        return write_jsonl(tmp_path / "pairs.jsonl", [{**p, "rejected": p["chosen"]} for p in pairs]), []
    if kind == "prompt_length":
        return write_jsonl(tmp_path / "pairs.jsonl", pairs), ["--data.init_args.max_prompt_length=100"]
    raise AssertionError(kind)


CASES = {
    "number": "train (data.path={data}), row 5: column 'rejected' (data.rejected_column) holds int ('3'); expected "
    "text or a list of chat messages",
    "messages": "train (data.path={data}), row {row}: column 'chosen' holds chat messages but tokenizer {model} "
    "(data.tokenizer) has no chat template",
    "all_dropped": "train (data.path={data}): no pair is left (identical chosen and rejected: 18)",
    "prompt_length": "data.max_prompt_length=100 leaves no room for a response within the model's context "
    "(model.model's n_positions=64); set it below 64",
    "lr": "model.optimizer.init_args.lr: Invalid learning rate: -0.1 (torch.optim.adamw.AdamW)",
    "inf_lr": "model.optimizer.init_args.lr must be finite, got inf (torch.optim.adamw.AdamW)",
}
#: through the CLI, one torch check and one of ours; every hyper-parameter is covered in
#: tests/training/test_optim_checks.py
OPTIMIZER = {
    "lr": "lr=-0.1",
    "inf_lr": "lr=.inf",
}


def one_error_line(capfd) -> str:
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("rdpo: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    return errors[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_content_is_one_line_naming_file_row_column_and_key(case, tmp_path, tiny_model_dir, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if case in OPTIMIZER:
        data, extra = write_pairs(tmp_path / "pairs.jsonl"), [f"--model.optimizer.init_args.{OPTIMIZER[case]}"]
    else:
        data, extra = bad_data(case, tmp_path)
    with pytest.raises(SystemExit) as exit_status:
        main(["fit", *own_model_args(tiny_model_dir, data, tmp_path), *extra])
    assert exit_status.value.code == 2
    line = one_error_line(capfd)
    if case == "messages":  # the first training row after the held-out split
        row = line.split("row ")[1].split(":")[0]
        assert row.isdigit()
    else:
        row = None
    assert CASES[case].format(data=data, model=tiny_model_dir, row=row) in line, line


def test_non_numeric_score_is_one_line(tmp_path, tiny_model_dir, capfd):
    rows = [
        {"prompt": f"the {NOUNS[i // 2]}", "response": ["happy laugh", "grief tears"][i % 2], "helpfulness": 3,
         "verbosity": 2}
        for i in range(8)
    ]  # fmt: skip
    rows[3]["helpfulness"] = "high"
    data = write_jsonl(tmp_path / "scored.jsonl", rows)
    with pytest.raises(SystemExit):
        main(["fit", "-c", str(scored_config(data, tiny_model_dir, tmp_path))])
    assert one_error_line(capfd) == (
        f"rdpo: error: source rows (data.path={data}), row 3: score column 'helpfulness' (data.score_columns) holds "
        "'high' (str); expected numbers (null, NaN or 'N/A' for a missing score)"
    )


@pytest.fixture()
def chat_model_dir(tmp_path, tiny_model_dir) -> Path:
    """The tiny GPT-2 with a tokenizer that has a chat template, as a chat model is saved."""
    directory = tmp_path / "chat-model"
    shutil.copytree(tiny_model_dir, directory)
    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return directory


def test_public_layouts_through_the_cli(tmp_path, chat_model_dir, tiny_model_dir, caplog, monkeypatch):
    """A saved DatasetDict (split names train_prefs/test_prefs) of implicit-prompt conversations fits with no
    column settings; max_length 512 meets a model of 64 positions with one line; HH-RLHF text validates."""
    monkeypatch.chdir(tmp_path)
    saved = tmp_path / "ultrafeedback"
    datasets.DatasetDict(
        {
            "train_prefs": datasets.Dataset.from_list(conversations(16)),
            "test_prefs": datasets.Dataset.from_list(conversations(4)),
        }
    ).save_to_disk(str(saved))
    args = own_model_args(chat_model_dir, saved, tmp_path)
    args += [
        "--data.init_args.train_split=train_prefs",
        "--data.init_args.val_split=test_prefs",
        "--trainer.max_steps=2",
    ]
    with caplog.at_level(logging.INFO):
        main(["fit", *args])
    err = caplog.text
    assert f"train (data.path={saved}): implicit prompt, conversational: prompt = the messages 'chosen' and " in err
    assert (
        "data.max_length=512 is more than the model's context (model.model's n_positions=64): sequences are cut to 64"
        in err
    )
    assert "train: 4 of 16 pairs had a response cut to fit max_length=64" in err
    caplog.clear()

    human = "\n\nHuman: the morning city\n\nAssistant: happy\n\nHuman: the river road"
    hh = [
        {"chosen": f"{human}\n\nAssistant: the train happy laugh", "rejected": f"{human}\n\nAssistant: the train grief"}
    ] * 12
    data = write_jsonl(tmp_path / "hh.jsonl", hh)
    with caplog.at_level(logging.INFO):
        main(["validate", *own_model_args(tiny_model_dir, data, tmp_path)])
    err = caplog.text
    assert "implicit prompt, HH-RLHF text: prompt = 'chosen' up to and including its last '\\n\\nAssistant:'" in err
