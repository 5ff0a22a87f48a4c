"""The attribute world's reward function: the world's own scores, in closed form for one-lexicon texts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rdpo_lightning.data import AttributeWorld
from rdpo_lightning.rewards import AttributeWorldReward, RewardFunction


def test_world_reward_matches_the_closed_form_softmax() -> None:
    reward = AttributeWorldReward(AttributeWorld())
    assert reward.attributes == ("sadness", "joy", "love", "anger", "fear")
    scores = reward.scores(["rage fury rage", "the day", "rage terror"])
    k = 5  # attributes; the world's softmax has K + 1 classes (neutral last), logits sharpness x share
    s = AttributeWorld().sharpness
    all_anger = np.full(k, 1 / (math.exp(s) + k))
    all_anger[3] = math.exp(s) / (math.exp(s) + k)
    np.testing.assert_allclose(scores[0], all_anger)
    np.testing.assert_allclose(scores[1], np.full(k, math.exp(0) / (k + math.exp(s))))
    half = math.exp(s / 2)
    expected = np.array([1, 1, 1, half, half]) / (2 * half + 4)
    np.testing.assert_allclose(scores[2], expected)


def test_scores_checks_the_shape_a_reward_function_returns() -> None:
    class Broken(RewardFunction):
        attributes = ("a", "b")

        def __call__(self, texts):
            return np.zeros((len(texts), 3))

    with pytest.raises(ValueError, match="expected \\(2, 2\\)"):
        Broken().scores(["x", "y"])
