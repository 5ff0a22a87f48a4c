"""Several rewards as one: the parts' columns side by side, each part reading the prompt its own way, built from
YAML as users write it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from jsonargparse import ArgumentParser

from rdpo_lightning.data import AttributeWorld
from rdpo_lightning.errors import InputError
from rdpo_lightning.rewards import AttributeWorldReward, CallableReward, PerAttributeRewards, RewardFunction

RULES = """
def words(texts):
    return [[len(t.split())] for t in texts]

def repeats_prompt_word(prompts, completions):
    return [[float(p.split()[0] in c.split()), len(p)] for p, c in zip(prompts, completions)]

def nan_for_empty(texts):
    return [[1.0 if t else float("nan")] for t in texts]
"""

PROMPTS = ["rage now", "joy please", "the day"]
COMPLETIONS = ["rage fury rage", "delight happy", "tears tears"]


@pytest.fixture()
def rules(user_module) -> str:
    return user_module("my_rules", RULES)


def _parts(rules: str) -> list[RewardFunction]:
    return [
        CallableReward(f"{rules}:repeats_prompt_word", ["on_topic", "prompt_characters"], include_prompt=True),
        AttributeWorldReward(),
        CallableReward(f"{rules}:words", ["words"]),
    ]


def _expected(prompts: list[str], completions: list[str]) -> np.ndarray:
    on_topic = [[float(p.split()[0] in c.split()), len(p)] for p, c in zip(prompts, completions, strict=True)]
    world = AttributeWorld().attribute_rewards(completions)
    words = [[len(c.split())] for c in completions]
    return np.concatenate([np.array(on_topic), world, np.array(words)], axis=1)


def test_columns_are_the_parts_in_order_each_reading_the_prompt_its_own_way(rules: str) -> None:
    reward = PerAttributeRewards(_parts(rules))
    world = tuple(AttributeWorld().attributes)
    assert reward.attributes == ("on_topic", "prompt_characters", *world, "words")
    scores = reward.score_completions(PROMPTS, COMPLETIONS)
    assert scores[:, 0].tolist() == [1.0, 0.0, 0.0]  # the prompt reached the part that reads it
    np.testing.assert_allclose(scores, _expected(PROMPTS, COMPLETIONS), rtol=1e-12)


def test_texts_alone_are_scored_by_every_part_side_by_side() -> None:
    sad_joy = AttributeWorld(attributes=["sadness", "joy"])
    anger = AttributeWorld(attributes=["anger"])
    reward = PerAttributeRewards([AttributeWorldReward(sad_joy), AttributeWorldReward(anger)])
    assert reward.attributes == ("sadness", "joy", "anger")
    expected = np.concatenate([sad_joy.attribute_rewards(COMPLETIONS), anger.attribute_rewards(COMPLETIONS)], axis=1)
    np.testing.assert_allclose(reward.scores(COMPLETIONS), expected, rtol=1e-12)


def test_an_attribute_scored_by_two_parts_is_refused_in_one_line() -> None:
    joy = AttributeWorldReward(AttributeWorld(attributes=["joy"]))
    with pytest.raises(InputError) as caught:
        PerAttributeRewards([AttributeWorldReward(), joy])
    assert str(caught.value) == (
        "PerAttributeRewards: attribute 'joy' is scored by rewards[0] (AttributeWorldReward) and rewards[1] "
        "(AttributeWorldReward); each attribute needs one"
    )
    with pytest.raises(InputError, match="at least one reward"):
        PerAttributeRewards([])


def test_a_nan_from_a_part_is_refused_naming_that_part(rules: str) -> None:
    reward = PerAttributeRewards([AttributeWorldReward(), CallableReward(f"{rules}:nan_for_empty", ["nonempty"])])
    with pytest.raises(InputError, match=rf"^CallableReward\(function={rules}:nan_for_empty\) returned non-finite"):
        reward.score_completions(PROMPTS, ["tears", "", "rage"])


class Placed(RewardFunction):
    """Remembers where it was moved."""

    def __init__(self, name: str) -> None:
        self.name, self.device = name, None

    @property
    def attributes(self) -> tuple[str, ...]:
        return (self.name,)

    def to(self, device: torch.device) -> Placed:
        self.device = torch.device(device)
        return self

    def __call__(self, texts):
        return np.zeros((len(texts), 1))


def test_to_moves_every_part() -> None:
    first, second = Placed("first"), Placed("second")
    reward = PerAttributeRewards([first, second])
    assert reward.to(torch.device("meta")) is reward
    assert first.device == second.device == torch.device("meta")


CONFIG = """
reward:
  class_path: rdpo_lightning.rewards.PerAttributeRewards
  init_args:
    rewards:
      - class_path: rdpo_lightning.rewards.CallableReward
        init_args:
          function: {rules}:repeats_prompt_word
          attributes: [on_topic, prompt_characters]
          include_prompt: true
      - class_path: rdpo_lightning.rewards.AttributeWorldReward
      - class_path: rdpo_lightning.rewards.CallableReward
        init_args: {{function: {rules}.words, attributes: [words]}}
"""


def test_yaml_with_a_list_of_class_paths_builds_the_parts(rules: str) -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(RewardFunction, "reward")
    reward = parser.instantiate_classes(parser.parse_string(CONFIG.format(rules=rules))).reward
    assert isinstance(reward, PerAttributeRewards)
    assert [type(part) for part in reward.rewards] == [CallableReward, AttributeWorldReward, CallableReward]
    assert reward.rewards[0].include_prompt and not reward.rewards[2].include_prompt
    np.testing.assert_allclose(reward.score_completions(PROMPTS, COMPLETIONS), _expected(PROMPTS, COMPLETIONS))
