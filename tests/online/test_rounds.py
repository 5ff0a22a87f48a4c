"""A round's pair rows from the ids the policy wrote (written_ids, pair_row), against hand-built rows."""

from __future__ import annotations

import torch

from rdpo_lightning.data.rows import EMPTY_RESPONSE, IDENTICAL
from rdpo_lightning.data.tokenize import IDENTICAL_AFTER_TRUNCATION, NO_ROOM, TRUNCATED
from rdpo_lightning.online.generation import written_ids
from rdpo_lightning.online.rounds import pair_row

EOS, PAD = 2, 0


def test_a_completion_keeps_its_eos_and_a_cut_one_gets_none():
    assert written_ids(torch.tensor([5, 6, EOS, PAD, PAD]), EOS) == [5, 6, EOS]
    assert written_ids(torch.tensor([5, 6, 7]), EOS) == [5, 6, 7]  # cut at max_new_tokens: no EOS added
    assert written_ids(torch.tensor([EOS, EOS, EOS]), EOS) == [EOS]  # pad is EOS (GPT-2): the first one ends it
    assert written_ids(torch.tensor([5, PAD, 7]), EOS) == [5, PAD, 7]  # a pad id the policy sampled is its token


def test_pair_rows_keep_the_responses_start_and_drop_what_offline_drops():
    prompt = [1, 9, 9]
    row, reason, cut = pair_row(prompt, [5, 6, EOS], [7, EOS], "a b", "c", max_length=8)
    assert (row, reason, cut) == ({"prompt_ids": prompt, "chosen_ids": [5, 6, EOS], "rejected_ids": [7, EOS]}, "", 0)
    row, _, cut = pair_row(prompt, [5, 6, 7, 8, EOS], [7, EOS], "a b c d", "c", max_length=6)
    assert row["chosen_ids"] == [5, 6, 7] and row["rejected_ids"] == [7, EOS] and cut == 1
    assert pair_row(prompt, [EOS], [7, EOS], "", "c", 8)[:2] == (None, EMPTY_RESPONSE)
    assert pair_row(prompt, [5, EOS], [5, EOS], "a", "a", 8)[:2] == (None, IDENTICAL)
    assert pair_row(prompt, [5, 6, 7], [5, 6, 8], "a b c", "a b d", 5)[:2] == (None, IDENTICAL_AFTER_TRUNCATION)
    assert pair_row(prompt, [5], [6], "a", "b", 3)[:2] == (None, NO_ROOM)


def test_data_drop_truncated_drops_a_pair_whose_response_would_be_cut():
    prompt = [1, 9, 9]
    assert pair_row(prompt, [5, 6, 7, 8, EOS], [7, EOS], "a b c d", "c", 6, drop_truncated=True)[:2] == (
        None,
        TRUNCATED,
    )
    row, reason, _ = pair_row(prompt, [5, 6, EOS], [7, EOS], "a b", "c", 6, drop_truncated=True)  # fits: kept
    assert reason == "" and row["chosen_ids"] == [5, 6, EOS]
