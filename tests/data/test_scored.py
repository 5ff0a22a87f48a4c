"""Scored completions (HelpSteer2 schema) → pairs at a mixture, checked against a direct computation; bad rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from rdpo_lightning.data import ScoredCompletionsDataModule
from rdpo_lightning.data.pairing import TIED
from rdpo_lightning.data.scored import EMPTY_RESPONSE, NULL_PROMPT, NULL_SCORE, TOO_FEW

SCORES = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
WORDS = ["happy", "sunny", "gloomy", "rain", "river", "road", "letter", "garden", "night", "music", "voice", "story"]


def helpsteer_rows(n_prompts: int, seed: int) -> list[dict]:
    """Several completions per prompt, integer scores 0..4 per attribute, as nvidia/HelpSteer2 has them."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_prompts):
        prompt = f"the day {WORDS[p % len(WORDS)]} {WORDS[(p // len(WORDS)) % len(WORDS)]}"
        for r in range(int(rng.integers(2, 5))):
            response = " ".join(rng.choice(WORDS, size=3)) + f" {WORDS[r]}"
            rows.append({"prompt": prompt, "response": response, **{k: int(rng.integers(0, 5)) for k in SCORES}})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def direct_best_vs_worst(rows: list[dict], weights: dict[str, float]) -> list[tuple[str, str, str]]:
    """Brute force: per prompt in order of appearance, max and min of Σ_k α_k s_k; ties between them skipped."""
    by_prompt: dict[str, list[dict]] = {}
    for row in rows:
        by_prompt.setdefault(row["prompt"], []).append(row)
    pairs = []
    for prompt, completions in by_prompt.items():
        rewards = [sum(weights.get(k, 0.0) * c[k] for k in SCORES) for c in completions]
        best = max(range(len(rewards)), key=lambda i: (rewards[i], -i))
        worst = min(range(len(rewards)), key=lambda i: (rewards[i], i))
        if not math.isclose(rewards[best], rewards[worst], abs_tol=1e-12):
            pairs.append((prompt, completions[best]["response"], completions[worst]["response"]))
    return pairs


def scored(tmp_path: Path, tokenizer: Path, train_rows, val_rows, **kwargs) -> ScoredCompletionsDataModule:
    train = write_jsonl(tmp_path / "train.jsonl", train_rows)
    val = write_jsonl(tmp_path / "validation.jsonl", val_rows)
    kwargs = {"score_columns": SCORES, "attribute_a": "helpfulness", "attribute_b": "verbosity", **kwargs}
    return ScoredCompletionsDataModule(path=train, val_path=val, tokenizer=str(tokenizer), max_length=32, **kwargs)


def raw_splits(dm: ScoredCompletionsDataModule):
    dm.tokenizer = dm.build_tokenizer()
    return dm.build_splits()


def test_best_vs_worst_pairs_match_a_direct_computation(tmp_path, world_tokenizer_dir):
    train_rows, val_rows = helpsteer_rows(40, seed=0), helpsteer_rows(15, seed=1)
    dm = scored(tmp_path, world_tokenizer_dir, train_rows, val_rows, train_alpha=0.3, val_alphas=[0.0, 0.7, 1.0])
    train, vals = raw_splits(dm)
    got = list(zip(train["prompt"], train["chosen"], train["rejected"], strict=True))
    expected = direct_best_vs_worst(train_rows, {"helpfulness": 0.3, "verbosity": 0.7})
    assert got == expected and len(got) > 20
    assert dm.drop_reasons["train"][TIED] == 40 - len(expected)
    assert list(vals) == ["alpha=0.30", "alpha=0.00", "alpha=0.70", "alpha=1.00"]
    for name, alpha in zip(vals, [0.3, 0.0, 0.7, 1.0], strict=True):
        got = list(zip(vals[name]["prompt"], vals[name]["chosen"], vals[name]["rejected"], strict=True))
        assert got == direct_best_vs_worst(val_rows, {"helpfulness": alpha, "verbosity": 1 - alpha})


def test_general_mixture_vectors_and_groups(tmp_path, world_tokenizer_dir):
    train_rows = helpsteer_rows(30, seed=2)
    weights = {"correctness": 0.5, "coherence": 0.25, "complexity": 0.25}
    dm = scored(
        tmp_path,
        world_tokenizer_dir,
        train_rows,
        helpsteer_rows(5, seed=3),
        attribute_a=None,
        attribute_b=None,
        train_mixtures=[weights, [0, 0, 0, 0, 1.0]],
    )
    train, vals = raw_splits(dm)
    assert list(vals) == ["correctness=0.50,coherence=0.25,complexity=0.25", "verbosity=1.00"]
    groups = np.array(train["group"])
    assert set(groups) == {0, 1}
    for g, w in enumerate([weights, {"verbosity": 1.0}]):
        expected = {(p, c, r) for p, c, r in direct_best_vs_worst(train_rows, w)}
        rows = train.select(np.flatnonzero(groups == g))
        assert set(zip(rows["prompt"], rows["chosen"], rows["rejected"], strict=True)) <= expected


def test_bradley_terry_pairing_with_deterministic_labels(tmp_path, world_tokenizer_dir):
    train_rows = helpsteer_rows(40, seed=4)
    dm = scored(
        tmp_path, world_tokenizer_dir, train_rows, helpsteer_rows(5, seed=5), train_alpha=0.5, pairing="bradley_terry"
    )
    train, _ = raw_splits(dm)
    score = {(r["prompt"], r["response"]): 0.5 * r["helpfulness"] + 0.5 * r["verbosity"] for r in train_rows}
    for prompt, chosen, rejected in zip(train["prompt"], train["chosen"], train["rejected"], strict=True):
        assert score[(prompt, chosen)] > score[(prompt, rejected)]
    assert len(train) + dm.drop_reasons["train"].get(TIED, 0) == 40


def test_bad_rows_are_counted_and_schema_errors_name_the_column(tmp_path, world_tokenizer_dir):
    rows = helpsteer_rows(10, seed=6)
    prompt = "the day lonely"
    rows += [
        {"prompt": prompt, "response": "happy sunny", **{k: 3 for k in SCORES}},
        {"prompt": prompt, "response": "gloomy rain", **{k: 1 for k in SCORES}, "verbosity": None},
        {"prompt": prompt, "response": "", **{k: 1 for k in SCORES}},
        {"prompt": None, "response": "rain", **{k: 1 for k in SCORES}},
        {"prompt": "the day bleak", "response": "rain", **{k: 2 for k in SCORES}, "coherence": float("nan")},
        {"prompt": "the day bleak", "response": "sunny", **{k: 4 for k in SCORES}},
    ]
    dm = scored(tmp_path, world_tokenizer_dir, rows, helpsteer_rows(4, seed=7), train_alpha=0.5)
    train, _ = raw_splits(dm)
    counts = dm.drop_reasons["train source rows"]
    assert counts == {NULL_SCORE: 2, EMPTY_RESPONSE: 1, NULL_PROMPT: 1, TOO_FEW: 2}
    assert prompt not in set(train["prompt"])

    with pytest.raises(ValueError, match=r"missing column\(s\) \['harmlessness'\].*data.score_columns"):
        raw_splits(scored(tmp_path, world_tokenizer_dir, rows, rows, score_columns=["harmlessness"], train_alpha=None,
                          attribute_a=None, attribute_b=None, train_mixtures=[[1.0]]))  # fmt: skip
    text_scores = [{**r, "helpfulness": "high"} for r in helpsteer_rows(3, seed=8)]
    with pytest.raises(
        ValueError, match=r"row 0: score column 'helpfulness' .* holds 'high' \(string\); expected numbers"
    ):
        raw_splits(scored(tmp_path, world_tokenizer_dir, text_scores, text_scores))


def test_chat_template_renders_prompt_and_completions(tmp_path, chat_tokenizer_dir, world_tokenizer_dir):
    rows = helpsteer_rows(12, seed=9)
    dm = scored(tmp_path, chat_tokenizer_dir, rows, helpsteer_rows(4, seed=10), apply_chat_template=True)
    dm.setup()
    tokenizer = dm.tokenizer
    row = dm.train_dataset[0]
    assert tokenizer.decode(row["prompt_ids"]).endswith("<bos> <unk>")  # the generation prompt "<bos> assistant"
    assert row["chosen_ids"][-1] == tokenizer.eos_token_id and row["chosen_ids"][-2] != tokenizer.eos_token_id
    with pytest.raises(ValueError, match="apply_chat_template is true but tokenizer"):
        raw_splits(scored(tmp_path, world_tokenizer_dir, rows, rows, apply_chat_template=True))


def test_message_prompts_use_the_chat_template_by_default(tmp_path, chat_tokenizer_dir, world_tokenizer_dir):
    """apply_chat_template null: as for pairwise data, prompts given as chat messages go through the template."""
    rows = [{**r, "prompt": [{"role": "user", "content": r["prompt"]}]} for r in helpsteer_rows(12, seed=11)]
    dm = scored(tmp_path, chat_tokenizer_dir, rows, rows[:8], train_alpha=0.5)
    train, _ = raw_splits(dm)
    tokenizer = dm.tokenizer
    first = rows[0]["prompt"]
    rendered = tokenizer.apply_chat_template(first, tokenize=False, add_generation_prompt=True)
    assert dm.templated and train["prompt"][0] == rendered
    with pytest.raises(ValueError, match=r"row 0: data.prompt_column 'prompt' holds chat messages but tokenizer"):
        raw_splits(scored(tmp_path, world_tokenizer_dir, rows, rows[:8], train_alpha=0.5))
