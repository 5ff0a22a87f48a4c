"""The attribute world's own rewards: the exact "classifier" that labelled its preference pairs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rdpo_lightning.data.world import AttributeWorld
from rdpo_lightning.rewards.base import RewardFunction


class AttributeWorldReward(RewardFunction):
    """``AttributeWorld.attribute_rewards``: each attribute's probability under the world's word-count softmax.

    Args:
        world: the world whose lexicons define the attributes (default: the default :class:`AttributeWorld`, the
            one the quickstart trains on).
    """

    def __init__(self, world: AttributeWorld | None = None) -> None:
        self.world = world if world is not None else AttributeWorld()

    @property
    def attributes(self) -> tuple[str, ...]:
        return tuple(self.world.attributes)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self.world.attribute_rewards(texts)
