"""Preference pairs at mixtures, built one way for every source of several scored completions per prompt.

:class:`MixturePairsDataModule` owns the mixture arguments (checked and resolved into a
:class:`~rdpo_lightning.data.mixture.MixtureGrid`), the pairing and its labels, the training groups and one
validation set per mixture. A subclass says only how it collects prompts and their scored completions
(:meth:`~MixturePairsDataModule.prompt_splits`), so the embedded world and a user's scored file cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np

from rdpo_lightning.data.datamodule import PreferenceDataModule
from rdpo_lightning.data.mixture import (
    Mixture,
    MixtureArguments,
    MixtureEntry,
    component_assignment,
    resolve_mixture_grid,
)
from rdpo_lightning.data.pairing import TIED, PromptCompletions, check_pairing, compared_completions, pair_completions
from rdpo_lightning.data.score_margins import SCORE_MARGINS, MixtureSpace, attribute_pair


@dataclass
class PairRandomness:
    """The generators pairing draws from. Each DataModule keeps its own streams, so a seed gives the pairs it always
    gave (published benchmark figures depend on them)."""

    #: which two completions Bradley–Terry compares (training prompts first, then validation prompts)
    compared: np.random.Generator
    #: which training mixture (group) labels each training prompt
    assignment: np.random.Generator
    #: the training labels
    train_labels: np.random.Generator
    #: the labels of validation mixture i
    val_labels: Callable[[int], np.random.Generator]


@dataclass
class PromptSplits:
    """What a subclass collects: training and validation prompts with their scored completions."""

    train: list[PromptCompletions]
    validation: list[PromptCompletions]
    randomness: PairRandomness


class MixturePairsDataModule(PreferenceDataModule):
    """Base class: one pair per prompt at its training mixture (several mixtures are groups), and every validation
    prompt paired again at each validation mixture (the sets differ only in their labels).

    Subclasses pass the attribute names their scores are in (``_attributes``: set by the subclass, not a key of the
    configuration), declare the arguments whose defaults they change, and pass the rest on as ``**kwargs``, which the
    CLI and ``--help`` resolve to these and :class:`PreferenceDataModule`'s.

    Args:
        attribute_a, attribute_b: the two attributes a single number α mixes (α·r_a + (1−α)·r_b).
        train_alpha, train_mixtures, train_shares: the training mixture(s) and, for several, each one's share of the
            pairs (:func:`~rdpo_lightning.data.mixture.resolve_mixture_grid`; default α₀ = 0.1).
        val_alphas, val_mixtures: the validation mixtures (default α ∈ {0, 0.25, 0.5, 0.75, 1}).
        mixture_kind: ``convex`` (Σ α_k s_k) or ``geometric`` (Π s_k^α_k).
        pairing: ``bradley_terry`` or ``best_vs_worst`` (:mod:`rdpo_lightning.data.pairing`).
        label_temperature: Bradley–Terry temperature of the labels (null: the higher reward wins).
    """

    def __init__(
        self,
        _attributes: Sequence[str],
        *,
        attribute_a: str | None = None,
        attribute_b: str | None = None,
        train_alpha: float | None = None,
        val_alphas: list[float] | None = None,
        train_mixtures: list[MixtureEntry] | None = None,
        train_shares: list[float] | None = None,
        val_mixtures: list[MixtureEntry] | None = None,
        mixture_kind: str = "convex",
        pairing: str = "bradley_terry",
        label_temperature: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        attributes = _attributes
        check_pairing(pairing)
        if label_temperature is not None and not label_temperature > 0:
            raise ValueError(f"data.label_temperature must be > 0 (or null), got {label_temperature}")
        given = MixtureArguments(  # by keyword: train_shares and val_alphas share a type, an order would swap them
            attribute_a=attribute_a,
            attribute_b=attribute_b,
            train_alpha=train_alpha,
            train_mixtures=train_mixtures,
            train_shares=train_shares,
            val_alphas=val_alphas,
            val_mixtures=val_mixtures,
            kind=mixture_kind,
        )
        grid = resolve_mixture_grid(attributes, given)
        self.train_mixtures = list(grid.train)
        self.train_shares = list(grid.shares)
        self.val_mixtures = list(grid.validation)
        self.pairing, self.label_temperature = pairing, label_temperature
        self.mixture_kind = mixture_kind
        self._space = MixtureSpace(
            attributes=tuple(attributes),
            kind=mixture_kind,
            train=tuple(grid.train),
            pair=attribute_pair(attributes, attribute_a, attribute_b),
            train_keys="data.train_mixtures" if train_mixtures is not None else "data.train_alpha",
        )

    @property
    def pair_columns(self) -> tuple[str, ...]:
        """``group`` and each training pair's attribute ``score_margins`` (:mod:`rdpo_lightning.data.score_margins`)."""
        return ("group", SCORE_MARGINS)

    def mixture_space(self) -> MixtureSpace:
        """What the ``score_margins`` column's K entries are, and the training mixture(s)."""
        return self._space

    # --- what subclasses provide -------------------------------------------------------------------------------
    def prompt_splits(self) -> PromptSplits:
        """The training and validation prompts with their scored completions (``self.tokenizer`` is set)."""
        raise NotImplementedError

    # --- pairs -------------------------------------------------------------------------------------------------
    def build_splits(self) -> tuple[datasets.Dataset, dict[str, datasets.Dataset]]:
        splits = self.prompt_splits()
        draws = splits.randomness
        bt = self.pairing == "bradley_terry"
        compared = compared_completions(splits.train, draws.compared) if bt else None
        assignment = component_assignment(len(splits.train), self.train_shares, draws.assignment)
        train = self._pairs("train", splits.train, self.train_mixtures, assignment, compared, draws.train_labels)
        val_compared = compared_completions(splits.validation, draws.compared) if bt else None
        held_out = np.zeros(len(splits.validation), dtype=int)
        vals = {}
        for i, mixture in enumerate(self.val_mixtures):
            rows = self._pairs(mixture.name, splits.validation, [mixture], held_out, val_compared, draws.val_labels(i))
            vals[mixture.name] = datasets.Dataset.from_dict(training_only_dropped(rows))
        return datasets.Dataset.from_dict(train), vals

    def _pairs(
        self,
        split: str,
        groups: Sequence[PromptCompletions],
        mixtures: Sequence[Mixture],
        assignment: np.ndarray,
        compared: Sequence[tuple[int, int]] | None,
        rng: np.random.Generator,
    ) -> dict[str, list]:
        rows, tied = pair_completions(groups, mixtures, assignment, self.pairing, self.label_temperature, compared, rng)
        self.count_dropped(split, TIED, tied)
        return rows


def training_only_dropped(rows: dict[str, list]) -> dict[str, list]:
    """A validation set's rows without the columns only training reads (``group``, ``score_margins``)."""
    return {name: values for name, values in rows.items() if name not in ("group", SCORE_MARGINS)}
