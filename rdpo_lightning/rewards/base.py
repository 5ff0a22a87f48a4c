"""The reward-function interface: texts in, one score per named attribute out.

A :class:`~rdpo_lightning.data.Mixture` turns the (n, K) attribute scores into the mixed reward r(α), so one reward
function serves every point α of the grid; its ``attributes`` must be in the order of the mixtures' weights.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch


class RewardFunction(ABC):
    """Scores texts on K named attributes."""

    @property
    @abstractmethod
    def attributes(self) -> tuple[str, ...]:
        """Names of the K score columns, in the order the mixtures' weights refer to."""

    @abstractmethod
    def __call__(self, texts: Sequence[str]) -> np.ndarray | torch.Tensor:
        """(n, K) scores of ``texts``."""

    def to(self, device: torch.device) -> RewardFunction:
        """Move any model the scores need next to the policy; a pure function has nothing to move."""
        return self

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """``self(texts)`` as a float64 (n, K) array, checked against ``attributes``."""
        values = self(list(texts))
        if isinstance(values, torch.Tensor):
            values = values.detach().to("cpu", torch.float64).numpy()
        values = np.asarray(values, dtype=np.float64)
        expected = (len(texts), len(self.attributes))
        if values.shape != expected:
            raise ValueError(
                f"{type(self).__name__} returned scores of shape {values.shape} for {len(texts)} texts; "
                f"expected {expected} (one column per attribute {list(self.attributes)})"
            )
        return values
