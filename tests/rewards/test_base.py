"""The checks every reward's scores pass: shape, finiteness, and prompts matched to completions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rdpo_lightning.errors import InputError
from rdpo_lightning.rewards import RewardFunction


class Fixed(RewardFunction):
    """Returns the given rows whatever the texts, and remembers what it was asked to score."""

    attributes = ("a", "b")

    def __init__(self, values) -> None:
        self.values = values
        self.seen: list[str] = []

    def __call__(self, texts):
        self.seen = list(texts)
        return self.values


def test_scores_refuse_nan_and_inf_in_one_line_naming_the_class_columns_and_texts() -> None:
    values = np.array([[0.0, np.nan], [1.0, 2.0], [np.inf, np.nan]])
    with pytest.raises(InputError) as caught:
        Fixed(values).scores(["x", "y", "z"])
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("Fixed returned non-finite scores")
    assert "for 2 of 3 texts" in message
    assert "attributes 'a' (1), 'b' (2)" in message


def test_scores_refuse_a_wrong_shape_as_input_error() -> None:
    with pytest.raises(InputError, match=r"Fixed returned scores of shape \(2, 3\) for 2 texts; expected \(2, 2\)"):
        Fixed(np.zeros((2, 3))).scores(["x", "y"])


def test_finite_tensor_scores_come_back_as_float64() -> None:
    values = torch.tensor([[0.5, -1.0]], dtype=torch.float32)
    scores = Fixed(values).scores(["x"])
    assert scores.dtype == np.float64
    np.testing.assert_array_equal(scores, [[0.5, -1.0]])


def test_score_completions_scores_the_completions_alone_by_default() -> None:
    reward = Fixed(np.ones((2, 2)))
    reward.score_completions(["question one", "question two"], ["answer one", "answer two"])
    assert reward.seen == ["answer one", "answer two"]


def test_score_completions_checks_what_a_prompt_reading_hook_returns() -> None:
    class PromptLength(Fixed):
        def completion_scores(self, prompts, completions):
            return np.array([[len(p), np.nan if not c else len(c)] for p, c in zip(prompts, completions, strict=True)])

    reward = PromptLength(None)
    np.testing.assert_array_equal(reward.score_completions(["ab", "c"], ["xyz", "w"]), [[2, 3], [1, 1]])
    with pytest.raises(InputError, match="non-finite scores .* for 1 of 2 texts, in attributes 'b' \\(1\\)"):
        reward.score_completions(["ab", "c"], ["xyz", ""])


def test_score_completions_refuses_prompts_and_completions_of_different_lengths() -> None:
    with pytest.raises(InputError, match="^Fixed was given 1 prompts for 2 completions; each completion needs"):
        Fixed(np.ones((2, 2))).score_completions(["p"], ["c", "d"])
