"""The embedded attribute world as a DataModule: trained at one mixture (or several, as groups), validated across a
grid of mixtures. No downloads; deterministic from ``seed``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import datasets
import numpy as np

from rdpo_lightning.data.datamodule import PreferenceDataModule
from rdpo_lightning.data.generate import SamplingConfig, sample_completions
from rdpo_lightning.data.mixture import MixtureEntry, component_assignment, label_pairs, resolve_mixture_grid
from rdpo_lightning.data.tokenizer import load_tokenizer, save_word_tokenizer
from rdpo_lightning.data.world import AttributeWorld


class AttributeWorldDataModule(PreferenceDataModule):
    """Pairs from the embedded :class:`AttributeWorld`.

    The paper's setting: rewards of two attributes ``attribute_a`` and ``attribute_b``, training labels at
    r(α₀) = α₀·r_a + (1−α₀)·r_b (``train_alpha``, default 0.1), validation on the same held-out response pairs
    labelled at every α of ``val_alphas``. Labels follow Bradley–Terry with ``label_temperature`` (null: the higher
    reward wins).

    General mixtures: ``train_mixtures`` / ``val_mixtures`` take entries that are a number (α on the a/b family), a
    list of K weights, or a mapping ``{attribute: weight}``. Several training mixtures are *groups*: pair i is labelled
    at its component's mixture and carries ``group`` = the component's index (for ``GroupDRO``); ``train_shares``
    sets each component's share of the training pairs (default equal).

    Responses come from the world's own generator, or, with ``response_policy`` (a path or Hub name of a causal
    LM), are sampled from that policy, ``sampling.num_per_prompt`` per prompt (the first two make the pair), as the
    paper samples from its SFT model. ``tokenizer``: a tokenizer name or path for the world's text (default: a
    word-level tokenizer built from the world's vocabulary).
    """

    def __init__(
        self,
        world: AttributeWorld | None = None,
        attribute_a: str | None = "anger",
        attribute_b: str | None = "fear",
        train_alpha: float | None = None,
        val_alphas: list[float] | None = None,
        train_mixtures: list[MixtureEntry] | None = None,
        train_shares: list[float] | None = None,
        val_mixtures: list[MixtureEntry] | None = None,
        mixture_kind: str = "convex",
        label_temperature: float | None = 0.05,
        num_train: int = 2048,
        num_val: int = 256,
        seed: int = 0,
        tokenizer: str | None = None,
        tokenizer_dir: str | None = None,
        response_policy: str | None = None,
        sampling: SamplingConfig | None = None,
        batch_size: int = 16,
        val_batch_size: int | None = None,
        max_length: int = 64,
        max_prompt_length: int | None = None,
        num_workers: int = 0,
        pad_to_multiple_of: int | None = None,
        truncation_mode: str = "keep_end",
        drop_truncated: bool = False,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(
            batch_size,
            val_batch_size,
            max_length,
            max_prompt_length,
            num_workers,
            pad_to_multiple_of,
            truncation_mode,
            drop_truncated,
            cache_dir,
        )
        self.world = world or AttributeWorld()
        if num_train < 1 or num_val < 1:
            raise ValueError(f"data.num_train and data.num_val must be >= 1, got {num_train} and {num_val}")
        if label_temperature is not None and not label_temperature > 0:
            raise ValueError(f"data.label_temperature must be > 0 (or null), got {label_temperature}")
        if tokenizer is not None and tokenizer_dir is not None:
            raise ValueError("give one of data.tokenizer (an existing tokenizer) and data.tokenizer_dir, not both")
        grid = resolve_mixture_grid(
            self.world.attributes,
            attribute_a,
            attribute_b,
            train_alpha=train_alpha,
            train_mixtures=train_mixtures,
            train_shares=train_shares,
            val_alphas=val_alphas,
            val_mixtures=val_mixtures,
            kind=mixture_kind,
        )
        self.train_mixtures = list(grid.train)
        self.train_shares = list(grid.shares)
        self.val_mixtures = list(grid.validation)
        self.label_temperature = label_temperature
        self.num_train = num_train
        self.num_val = num_val
        self.seed = seed
        self.tokenizer_name = tokenizer
        self.tokenizer_dir = tokenizer_dir
        self.response_policy = response_policy
        self.sampling = sampling or SamplingConfig()

    @property
    def train_mixture(self):
        """The (first) training mixture α₀."""
        return self.train_mixtures[0]

    def build_tokenizer(self):
        if self.tokenizer_name is not None:
            return load_tokenizer(self.tokenizer_name)
        vocab = self.world.vocabulary()
        digest = hashlib.sha1(" ".join(vocab).encode()).hexdigest()[:12]
        directory = Path(self.tokenizer_dir) if self.tokenizer_dir else self.cache_dir / f"world-tokenizer-{digest}"
        if not (directory / "tokenizer.json").exists():
            save_word_tokenizer(vocab, directory)
        return load_tokenizer(directory)

    def _responses(self, prompts: list[str], rng: np.random.Generator) -> tuple[list[str], list[str]]:
        if self.response_policy is None:
            return self.world.sample_responses(len(prompts), rng), self.world.sample_responses(len(prompts), rng)
        completions = sample_completions(
            self.response_policy, self.tokenizer, prompts, self.sampling, self.seed, self.cache_dir
        )
        return [c[0] for c in completions], [c[1] for c in completions]

    @staticmethod
    def _pairs(prompts, first, second, first_wins, groups=None) -> datasets.Dataset:
        chosen = [a if w else b for a, b, w in zip(first, second, first_wins, strict=True)]
        rejected = [b if w else a for a, b, w in zip(first, second, first_wins, strict=True)]
        columns = {"prompt": list(prompts), "chosen": chosen, "rejected": rejected}
        if groups is not None:
            columns["group"] = [int(g) for g in groups]
        return datasets.Dataset.from_dict(columns)

    def build_splits(self) -> tuple[datasets.Dataset, dict[str, datasets.Dataset]]:
        rng = np.random.default_rng(self.seed)
        n, cut = self.num_train + self.num_val, self.num_train
        prompts = self.world.sample_prompts(n, rng)
        first, second = self._responses(prompts, rng)
        rewards_first = self.world.attribute_rewards(first)
        rewards_second = self.world.attribute_rewards(second)

        groups = component_assignment(cut, self.train_shares, np.random.default_rng([self.seed, 0]))
        wins = label_pairs(
            rewards_first[:cut], rewards_second[:cut], self.train_mixtures, groups, self.label_temperature, rng
        )
        train = self._pairs(prompts[:cut], first[:cut], second[:cut], wins, groups)
        vals = {}
        held_out = np.zeros(n - cut, dtype=int)
        for i, mixture in enumerate(self.val_mixtures):
            label_rng = np.random.default_rng([self.seed, i + 1])
            wins = label_pairs(
                rewards_first[cut:], rewards_second[cut:], [mixture], held_out, self.label_temperature, label_rng
            )
            vals[mixture.name] = self._pairs(prompts[cut:], first[cut:], second[cut:], wins)
        return train, vals
