"""A user's function as the reward: imported from its path, called on the completions (or with their prompts), its
scores checked like any reward's."""

from __future__ import annotations

import numpy as np
import pytest

from rdpo_lightning.errors import InputError
from rdpo_lightning.rewards import CallableReward

SCORERS = """
def lengths(texts):
    return [[len(t), len(t.split())] for t in texts]

def answers_the_prompt(prompts, completions):
    return [[float(p.split()[-1] in c.split())] for p, c in zip(prompts, completions)]

def one_nan(texts):
    return [[float("nan") if t == "bad" else 1.0] for t in texts]

class Namespace:
    @staticmethod
    def lengths(texts):
        return [[len(t), 0] for t in texts]

NOT_A_FUNCTION = 3
"""


@pytest.fixture()
def scorers(user_module) -> str:
    return user_module("my_scorers", SCORERS)


def test_the_function_scores_the_completions_alone_by_either_import_path(scorers: str) -> None:
    for path in (f"{scorers}:lengths", f"{scorers}.lengths"):
        reward = CallableReward(path, attributes=["characters", "words"])
        assert reward.attributes == ("characters", "words")
        scores = reward.score_completions(["a long question", "why"], ["yes it is", "no"])
        np.testing.assert_array_equal(scores, [[9, 3], [2, 1]])
        assert scores.dtype == np.float64
        np.testing.assert_array_equal(reward.scores(["abc"]), [[3, 1]])
    nested = CallableReward(f"{scorers}:Namespace.lengths", attributes=["characters", "zero"])
    np.testing.assert_array_equal(nested.scores(["abcd"]), [[4, 0]])


def test_with_include_prompt_the_function_reads_each_prompt_with_its_completion(scorers: str) -> None:
    reward = CallableReward(f"{scorers}:answers_the_prompt", attributes=["on_topic"], include_prompt=True)
    scores = reward.score_completions(["say cat", "say dog", "say cat"], ["a cat", "a cat", "dog"])
    np.testing.assert_array_equal(scores, [[1.0], [0.0], [0.0]])
    with pytest.raises(InputError, match="include_prompt true: it scores completions with their prompts"):
        reward.scores(["a cat"])


def test_no_completions_are_scored_without_calling_the_function(scorers: str) -> None:
    reward = CallableReward(f"{scorers}:answers_the_prompt", attributes=["on_topic"], include_prompt=True)
    assert reward.score_completions([], []).shape == (0, 1)  # the function would fail on an empty zip's [][-1]


@pytest.mark.parametrize(
    ("path", "why"),
    [
        (
            "no_such_package.scorers:lengths",
            "cannot import no_such_package.scorers (No module named 'no_such_package')",
        ),
        ("{scorers}:missing", "{scorers} has no attribute missing"),
        ("{scorers}:NOT_A_FUNCTION", "NOT_A_FUNCTION is a int, not a function"),
        ("lengths", "expected an import path 'package.module:name' or 'package.module.name'"),
    ],
)
def test_a_bad_import_path_is_one_line_naming_the_key_and_path(scorers: str, path: str, why: str) -> None:
    path, why = path.format(scorers=scorers), why.format(scorers=scorers)
    with pytest.raises(InputError) as caught:
        CallableReward(path, attributes=["a"])
    assert str(caught.value) == f"CallableReward(function={path}): {why}"


def test_a_wrong_width_or_a_nan_is_the_base_checks_one_line_naming_the_function(scorers: str) -> None:
    with pytest.raises(InputError, match=rf"^CallableReward\(function={scorers}:lengths\) returned scores of shape"):
        CallableReward(f"{scorers}:lengths", attributes=["characters"]).scores(["abc"])
    with pytest.raises(InputError, match=rf"^CallableReward\(function={scorers}:one_nan\) returned non-finite scores"):
        CallableReward(f"{scorers}:one_nan", attributes=["ok"]).score_completions(["p", "q"], ["fine", "bad"])
