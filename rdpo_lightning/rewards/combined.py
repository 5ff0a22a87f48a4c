"""Several rewards as one: a model (or a function) per attribute, or several models with a few outputs each.

Online training asks one reward for K columns; this one asks each part for its own and places them side by side, so
each part reads the prompt its own way (a reward model's chat template, a function's prompt rule).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from rdpo_lightning.errors import InputError
from rdpo_lightning.rewards.base import RewardFunction


class PerAttributeRewards(RewardFunction):
    """The parts' attributes, concatenated in the order the parts are listed (the order the mixtures' weights
    refer to).

    Args:
        rewards: the parts; no attribute may be scored by two of them (choose a classifier's ``labels``).
    """

    def __init__(self, rewards: list[RewardFunction]) -> None:
        if not rewards:
            raise InputError("PerAttributeRewards needs at least one reward in rewards")
        for index, reward in enumerate(rewards):
            if not isinstance(reward, RewardFunction):
                raise InputError(f"PerAttributeRewards rewards[{index}] is a {type(reward).__name__}, not a reward")
        owner: dict[str, int] = {}
        for index, reward in enumerate(rewards):
            for name in reward.attributes:
                if name in owner:
                    raise InputError(
                        f"PerAttributeRewards: attribute {name!r} is scored by rewards[{owner[name]}] "
                        f"({rewards[owner[name]]!r}) and rewards[{index}] ({reward!r}); each attribute needs one"
                    )
                owner[name] = index
        self.rewards = list(rewards)

    @property
    def attributes(self) -> tuple[str, ...]:
        return tuple(name for reward in self.rewards for name in reward.attributes)

    def __repr__(self) -> str:
        return f"PerAttributeRewards(rewards={self.rewards!r})"

    def to(self, device: torch.device) -> PerAttributeRewards:
        for reward in self.rewards:
            reward.to(device)
        return self

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        return np.concatenate([reward.scores(texts) for reward in self.rewards], axis=1)

    def completion_scores(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        return np.concatenate([reward.score_completions(prompts, completions) for reward in self.rewards], axis=1)
