"""DataModules: tokenise preference pairs and serve one training set and several *named* validation sets.

:class:`PreferenceDataModule` owns tokenisation, truncation accounting and batching; subclasses only say where the
pairs come from (``build_tokenizer`` and ``build_splits``). Validation sets are a list, each with a readable name
(``val_names``): the first is in-distribution, the rest probe preference shift.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import datasets
import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from rdpo_lightning.data.collate import PairCollator
from rdpo_lightning.data.mixture import KINDS, Mixture, bradley_terry_labels, two_attribute_mixture
from rdpo_lightning.data.sampler import ResumableDataLoader, ResumableSampler
from rdpo_lightning.data.tokenize import FIT_COLUMN, TOKEN_COLUMNS, check_lengths, tokenize_pair
from rdpo_lightning.data.tokenizer import load_tokenizer, save_word_tokenizer
from rdpo_lightning.data.world import AttributeWorld

log = logging.getLogger(__name__)


def check_unit_interval(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")


def default_cache_dir() -> Path:
    import os

    return Path(os.environ.get("RDPO_CACHE", Path.home() / ".cache" / "rdpo_lightning"))


class PreferenceDataModule(L.LightningDataModule):
    """Base class: tokenised pairs, right-padded concatenated batches, named validation loaders."""

    def __init__(
        self,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        max_length: int = 512,
        max_prompt_length: int | None = None,
        num_workers: int = 0,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        for name, value in (("val_batch_size", val_batch_size), ("pad_to_multiple_of", pad_to_multiple_of)):
            if value is not None and value < 1:
                raise ValueError(f"data.{name} must be >= 1 or null, got {value}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        check_lengths(max_length, max_prompt_length)
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.num_workers = num_workers
        self.pad_to_multiple_of = pad_to_multiple_of
        self.tokenizer = None
        self.train_dataset: datasets.Dataset | None = None
        self.val_datasets: dict[str, datasets.Dataset] = {}
        self.dropped: dict[str, int] = {}

    # --- what subclasses provide -------------------------------------------------------------------------------
    def build_tokenizer(self):
        raise NotImplementedError

    def build_splits(self) -> tuple[datasets.Dataset, dict[str, datasets.Dataset]]:
        """Untokenised ``prompt``/``chosen``/``rejected`` (optionally ``group``) training and named val sets."""
        raise NotImplementedError

    # --- Lightning hooks ---------------------------------------------------------------------------------------
    @property
    def val_names(self) -> list[str]:
        return list(self.val_datasets)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        self.tokenizer = self.build_tokenizer()
        train, vals = self.build_splits()
        self.train_dataset = self._tokenize("train", train)
        self.val_datasets = {name: self._tokenize(name, ds) for name, ds in vals.items()}

    def _tokenize(self, split: str, dataset: datasets.Dataset) -> datasets.Dataset:
        kwargs = {
            "tokenizer": self.tokenizer,
            "max_length": self.max_length,
            "max_prompt_length": self.max_prompt_length,
        }
        tokenized = dataset.map(tokenize_pair, fn_kwargs=kwargs, desc=f"tokenising {split}")
        kept = tokenized.filter(lambda fits: fits, input_columns=FIT_COLUMN, desc=f"dropping over-long pairs ({split})")
        dropped = len(tokenized) - len(kept)
        self.dropped[split] = dropped
        if dropped:
            log.warning(
                "%s: dropped %d of %d pairs whose prompt leaves no room for a response within max_length=%d",
                split, dropped, len(tokenized), self.max_length,
            )  # fmt: skip
        if len(kept) == 0:
            raise ValueError(f"{split}: no pair fits within max_length={self.max_length}")
        keep = [c for c in (*TOKEN_COLUMNS, "group") if c in kept.column_names]
        return kept.select_columns(keep)

    def _collator(self) -> PairCollator:
        return PairCollator(self.tokenizer.pad_token_id, self.pad_to_multiple_of)

    def train_dataloader(self) -> DataLoader:
        """Shuffled per epoch from (seed, epoch) and sharded by data-parallel rank; resumes mid-epoch exactly."""
        return ResumableDataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            sampler=ResumableSampler.for_trainer(self.train_dataset, self.trainer),
            collate_fn=self._collator(),
            num_workers=self.num_workers,
            drop_last=False,
        )

    def val_dataloader(self) -> list[DataLoader]:
        return [
            DataLoader(ds, batch_size=self.val_batch_size, collate_fn=self._collator(), num_workers=self.num_workers)
            for ds in self.val_datasets.values()
        ]


class AttributeWorldDataModule(PreferenceDataModule):
    """Pairs from the embedded :class:`AttributeWorld`: trained at one mixture, validated across a grid.

    The paper's setting: rewards of two attributes ``attribute_a`` and ``attribute_b``, training labels at
    r(α₀) = α₀·r_a + (1−α₀)·r_b (``train_alpha``), validation on the same held-out response pairs labelled at every
    α of ``val_alphas``. Labels follow Bradley–Terry with ``label_temperature`` (null: the higher reward wins).
    """

    def __init__(
        self,
        world: AttributeWorld | None = None,
        attribute_a: str = "anger",
        attribute_b: str = "fear",
        train_alpha: float = 0.1,
        val_alphas: list[float] | None = None,
        mixture_kind: str = "convex",
        label_temperature: float | None = 0.05,
        num_train: int = 2048,
        num_val: int = 256,
        seed: int = 0,
        tokenizer_dir: str | None = None,
        batch_size: int = 16,
        val_batch_size: int | None = None,
        max_length: int = 64,
        max_prompt_length: int | None = None,
        num_workers: int = 0,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        super().__init__(batch_size, val_batch_size, max_length, max_prompt_length, num_workers, pad_to_multiple_of)
        self.world = world or AttributeWorld()
        index_a, index_b = self.world.attribute_index(attribute_a), self.world.attribute_index(attribute_b)
        if index_a == index_b:
            raise ValueError(f"attribute_a and attribute_b must differ, both are {attribute_a!r}")
        if num_train < 1 or num_val < 1:
            raise ValueError(f"num_train and num_val must be >= 1, got {num_train} and {num_val}")
        check_unit_interval("data.train_alpha", train_alpha)
        for i, alpha in enumerate(val_alphas or []):
            check_unit_interval(f"data.val_alphas[{i}]", alpha)
        if mixture_kind not in KINDS:
            raise ValueError(f"data.mixture_kind must be one of {', '.join(map(repr, KINDS))}; got {mixture_kind!r}")
        if label_temperature is not None and not (math.isfinite(label_temperature) and label_temperature > 0):
            raise ValueError(
                f"data.label_temperature must be > 0 (or null: the higher reward wins), got {label_temperature}"
            )
        if seed < 0:
            raise ValueError(f"data.seed must be >= 0, got {seed}")
        k = self.world.num_attributes
        self.train_mixture = two_attribute_mixture(train_alpha, index_a, index_b, k, mixture_kind)
        alphas = [0.0, 0.25, 0.5, 0.75, 1.0] if val_alphas is None else list(val_alphas)
        grid = [two_attribute_mixture(a, index_a, index_b, k, mixture_kind) for a in alphas]
        self.val_mixtures = [self.train_mixture] + [m for m in grid if m.name != self.train_mixture.name]
        self.label_temperature = label_temperature
        self.num_train = num_train
        self.num_val = num_val
        self.seed = seed
        self.tokenizer_dir = tokenizer_dir

    def build_tokenizer(self):
        vocab = self.world.vocabulary()
        import hashlib

        digest = hashlib.sha1(" ".join(vocab).encode()).hexdigest()[:12]
        directory = (
            Path(self.tokenizer_dir) if self.tokenizer_dir else default_cache_dir() / f"world-tokenizer-{digest}"
        )
        if not (directory / "tokenizer.json").exists():
            save_word_tokenizer(vocab, directory)
        return load_tokenizer(directory)

    def _labelled(self, prompts, first, second, mixture: Mixture, rng: np.random.Generator) -> datasets.Dataset:
        reward_first = mixture.combine(self.world.attribute_rewards(first))
        reward_second = mixture.combine(self.world.attribute_rewards(second))
        first_wins = bradley_terry_labels(reward_first, reward_second, self.label_temperature, rng)
        chosen = [a if w else b for a, b, w in zip(first, second, first_wins, strict=True)]
        rejected = [b if w else a for a, b, w in zip(first, second, first_wins, strict=True)]
        return datasets.Dataset.from_dict({"prompt": list(prompts), "chosen": chosen, "rejected": rejected})

    def build_splits(self) -> tuple[datasets.Dataset, dict[str, datasets.Dataset]]:
        rng = np.random.default_rng(self.seed)
        n = self.num_train + self.num_val
        prompts = self.world.sample_prompts(n, rng)
        first, second = self.world.sample_responses(n, rng), self.world.sample_responses(n, rng)
        cut = self.num_train
        train = self._labelled(prompts[:cut], first[:cut], second[:cut], self.train_mixture, rng)
        vals = {}
        for mixture in self.val_mixtures:
            label_rng = np.random.default_rng([self.seed, len(vals) + 1])
            vals[mixture.name] = self._labelled(prompts[cut:], first[cut:], second[cut:], mixture, label_rng)
        return train, vals
