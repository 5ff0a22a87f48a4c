"""Column paths into nested ratings: UltraFeedback's raw schema (``openbmb/UltraFeedback``: one row per instruction,
a list of completions, each with per-aspect ``{Rating, Rationale}`` annotations, ``"N/A"`` where an aspect was not
rated) read by the scored DataModule; pairs checked against a brute-force loop over the nested rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rdpo_lightning.data import ScoredCompletionsDataModule
from rdpo_lightning.data.scored import NULL_SCORE
from rdpo_lightning.errors import InputError

WORDS = ["happy", "sunny", "gloomy", "rain", "river", "road", "letter", "garden", "night", "music"]
ASPECTS = ["helpfulness", "honesty", "instruction_following", "truthfulness"]
PATHS = [f"completions[].annotations.{aspect}.Rating" for aspect in ("helpfulness", "honesty")]


def ultrafeedback_raw_rows(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        completions = []
        for c in range(4):
            ratings = {a: str(int(rng.integers(1, 6))) for a in ASPECTS}
            if rng.random() < 0.15:
                ratings[str(rng.choice(ASPECTS[:2]))] = "N/A"
            annotations = {a: {"Rating": r, "Rationale": "because"} for a, r in ratings.items()}
            for aspect in ("helpfulness", "truthfulness"):
                annotations[aspect].update({"Rationale For Rating": "fine", "Type": ["1", "2"]})
            completions.append(
                {
                    "annotations": annotations,
                    "critique": "ok",
                    "custom_system_prompt": "be kind",
                    "fine-grained_score": 3.5,
                    "model": f"model-{c}",
                    "overall_score": 6.0,
                    "principle": "helpfulness",
                    "response": " ".join(rng.choice(WORDS, size=3)) + f" {WORDS[c]}",
                }
            )
        rows.append(
            {
                "source": "evol_instruct",
                "instruction": f"the day {WORDS[i % len(WORDS)]} {i}",
                "models": [f"model-{c}" for c in range(4)],
                "completions": completions,
                "correct_answers": ["None"],
                "incorrect_answers": ["None"],
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def brute_force_pairs(rows: list[dict], alpha: float) -> tuple[list[tuple[str, str, str]], int]:
    """Best vs worst of α·helpfulness + (1−α)·honesty per instruction, N/A completions left out; and their count."""
    pairs, skipped = [], 0
    for row in rows:
        rated = []
        for completion in row["completions"]:
            scores = [completion["annotations"][a]["Rating"] for a in ("helpfulness", "honesty")]
            if "N/A" in scores:
                skipped += 1
                continue
            rated.append((alpha * float(scores[0]) + (1 - alpha) * float(scores[1]), completion["response"]))
        if len(rated) < 2:
            continue
        best = max(range(len(rated)), key=lambda i: (rated[i][0], -i))
        worst = min(range(len(rated)), key=lambda i: (rated[i][0], i))
        if rated[best][0] != rated[worst][0]:
            pairs.append((row["instruction"], rated[best][1], rated[worst][1]))
    return pairs, skipped


def datamodule(path: str, val_path: str, tokenizer: Path, **kwargs) -> ScoredCompletionsDataModule:
    kwargs = {
        "prompt_column": "instruction",
        "response_column": "completions[].response",
        "score_columns": PATHS,
        "attribute_a": PATHS[0],
        "attribute_b": PATHS[1],
        "train_alpha": 0.5,
        "val_alphas": [0.0],
        "max_length": 32,
        **kwargs,
    }
    return ScoredCompletionsDataModule(path=path, val_path=val_path, tokenizer=str(tokenizer), **kwargs)


def test_ultrafeedback_raw_nested_ratings(tmp_path, world_tokenizer_dir):
    rows, val_rows = ultrafeedback_raw_rows(20, seed=0), ultrafeedback_raw_rows(6, seed=1)
    dm = datamodule(write_jsonl(tmp_path / "t.jsonl", rows), write_jsonl(tmp_path / "v.jsonl", val_rows),
                    world_tokenizer_dir)  # fmt: skip
    dm.tokenizer = dm.build_tokenizer()
    train, vals = dm.build_splits()
    expected, skipped = brute_force_pairs(rows, 0.5)
    assert list(zip(train["prompt"], train["chosen"], train["rejected"], strict=True)) == expected
    assert skipped > 0 and dm.drop_reasons["train source rows"][NULL_SCORE] == skipped  # "N/A": skipped, counted
    expected_val, _ = brute_force_pairs(val_rows, 0.0)
    assert list(zip(*(vals["alpha=0.00"][c] for c in ("prompt", "chosen", "rejected")), strict=True)) == expected_val


def test_path_errors_name_the_key_row_and_keys(tmp_path, world_tokenizer_dir):
    rows = ultrafeedback_raw_rows(4, seed=2)
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    typo = "completions[].annotations.helpfulness.rating"
    with pytest.raises(InputError) as error:
        datamodule(path, path, world_tokenizer_dir, score_columns=[typo, PATHS[1]], attribute_a=typo).setup()
    assert str(error.value) == (
        f"train source rows (data.path={path}), row 0, completions[0]: data.score_columns path {typo!r}: "
        "annotations.helpfulness has no key 'rating' (its keys: ['Rating', 'Rationale', 'Rationale For Rating', "
        "'Type'])"
    )
    rows[1]["completions"][2]["annotations"]["honesty"]["Rating"] = "very"
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(InputError) as error:
        datamodule(path, path, world_tokenizer_dir).setup()
    assert str(error.value).startswith(
        f"train source rows (data.path={path}), row 1, completions[2]: score column {PATHS[1]!r} (data.score_columns) "
        "holds 'very' (str); expected numbers"
    )
