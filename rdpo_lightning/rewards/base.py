"""The reward-function interface: texts in, one score per named attribute out.

A :class:`~rdpo_lightning.data.Mixture` turns the (n, K) attribute scores into the mixed reward r(α), so one reward
function serves every point α of the grid; its ``attributes`` must be in the order of the mixtures' weights.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch

from rdpo_lightning.errors import InputError


class RewardFunction(ABC):
    """Scores texts on K named attributes."""

    @property
    @abstractmethod
    def attributes(self) -> tuple[str, ...]:
        """Names of the K score columns, in the order the mixtures' weights refer to."""

    @abstractmethod
    def __call__(self, texts: Sequence[str]) -> np.ndarray | torch.Tensor:
        """(n, K) scores of ``texts``."""

    def __repr__(self) -> str:
        """How errors name this reward; subclasses add the argument that tells two of them apart."""
        return type(self).__name__

    def to(self, device: torch.device) -> RewardFunction:
        """Move any model the scores need next to the policy; a pure function has nothing to move."""
        return self

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """``self(texts)`` as a float64 (n, K) array, checked against ``attributes``."""
        texts = list(texts)
        return self.checked(self(texts), len(texts))

    def score_completions(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """(n, K) float64 scores of each completion written for its prompt; checked (shape, finiteness).

        Online training scores a policy's completions with every reward through this one method, whatever each
        reward needs to see of the prompt: a reward that reads the prompt overrides :meth:`completion_scores`.
        """
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions):
            raise InputError(
                f"{self!r} was given {len(prompts)} prompts for {len(completions)} completions; "
                "each completion needs the prompt it was written for"
            )
        return self.checked(self.completion_scores(prompts, completions), len(completions))

    def completion_scores(self, prompts: list[str], completions: list[str]) -> np.ndarray | torch.Tensor:
        """Unchecked (n, K) scores for :meth:`score_completions`; by default the completions alone are scored."""
        return self(completions)

    def checked(self, values: np.ndarray | torch.Tensor, count: int) -> np.ndarray:
        """``values`` as float64, refused (one line naming this reward) unless (count, K) and finite: a NaN would
        otherwise turn into a pair's label or a mixture's mean without a word."""
        if isinstance(values, torch.Tensor):
            values = values.detach().to("cpu", torch.float64).numpy()
        values = np.asarray(values, dtype=np.float64)
        expected = (count, len(self.attributes))
        if values.shape != expected:
            raise InputError(
                f"{self!r} returned scores of shape {values.shape} for {count} texts; "
                f"expected {expected} (one column per attribute {list(self.attributes)})"
            )
        finite = np.isfinite(values)
        if not finite.all():
            columns = ", ".join(
                f"{name!r} ({bad})" for name, bad in zip(self.attributes, (~finite).sum(0).tolist(), strict=True) if bad
            )
            raise InputError(
                f"{self!r} returned non-finite scores (NaN or inf) for {int((~finite.all(1)).sum())} of {count} "
                f"texts, in attributes {columns}; every score must be a finite number"
            )
        return values
