"""DataModules: tokenise preference pairs and serve one training set and several *named* validation sets.

:class:`PreferenceDataModule` owns row checks, tokenisation, drop accounting, caching and batching; subclasses only
say where the pairs come from (``build_tokenizer`` and ``build_splits``). Validation sets are a list, each with a
readable name (``val_names``): the first is in-distribution, the rest probe preference shift.

Work happens where Lightning expects it: ``prepare_data`` (one process per node) downloads, builds and tokenises,
writing the tokenised Arrow files into the cache under a key made of the split's ``datasets`` fingerprint, the
tokenizer and the truncation settings; ``setup`` (every process) builds the same splits and finds those files, so
neither a second rank nor a second run tokenises again.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import lightning as L
from datasets.fingerprint import Hasher
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader

from rdpo_lightning.checks import check_int_at_least
from rdpo_lightning.data.collate import PairCollator
from rdpo_lightning.data.context_length import fit_to_model_context
from rdpo_lightning.data.rows import PAIR_COLUMNS, check_and_tokenize, require_columns
from rdpo_lightning.data.sampler import LengthGroupedSampler, ResumableDataLoader, ResumableSampler
from rdpo_lightning.data.tokenize import (
    DROP_COLUMN,
    NO_ROOM,
    PROMPT_CUT,
    RESPONSE_CUT,
    TOKEN_COLUMNS,
    TRUNCATION_COLUMN,
    check_lengths,
    truncation_text,
)
from rdpo_lightning.errors import InputError

log = logging.getLogger(__name__)

#: bump when the row checks or tokenisation change what they write, so old cache files are not reused
PIPELINE_VERSION = "pairs-v4"


def default_cache_dir() -> Path:
    return Path(os.environ.get("RDPO_CACHE", Path.home() / ".cache" / "rdpo_lightning"))


class PreferenceDataModule(L.LightningDataModule):
    """Base class: checked, tokenised, cached pairs; right-padded concatenated batches; named validation loaders.

    Args:
        batch_size, val_batch_size: per-process batch sizes (validation defaults to ``batch_size``).
        max_length: prompt + response tokens per sequence; ``max_prompt_length``: prompt tokens at most.
        truncation_mode: ``keep_end`` keeps the prompt's end, ``keep_start`` its start; responses keep their start.
        drop_truncated: drop (and count) pairs whose responses would be cut, instead of cutting them.
        cache_dir: where tokenised splits are cached (default ``$RDPO_CACHE`` or ``~/.cache/rdpo_lightning``).
        num_proc: processes for ``datasets.map`` on large data (None: in-process).
        padding_free: pack each batch's sequences into rows with restarting ``position_ids`` instead of padding
            them (:mod:`rdpo_lightning.data.packing`); same log-probs, far less padding with uneven lengths.
        group_by_length: draw training batches of similar lengths (:class:`LengthGroupedSampler`), for models that
            cannot pack; resumes exactly with the same batch size and process count.
    """

    #: texts are already chat-templated (no BOS added to prompts, no EOS to responses); set by subclasses
    templated: bool = False

    def __init__(
        self,
        *,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        max_length: int = 512,
        max_prompt_length: int | None = None,
        num_workers: int = 0,
        pad_to_multiple_of: int | None = None,
        padding_free: bool = False,
        group_by_length: bool = False,
        truncation_mode: str = "keep_end",
        drop_truncated: bool = False,
        cache_dir: str | None = None,
        num_proc: int | None = None,
    ) -> None:
        super().__init__()
        check_int_at_least("data.batch_size", batch_size, 1)
        check_int_at_least("data.val_batch_size", val_batch_size, 1, allow_none=True)
        check_int_at_least("data.pad_to_multiple_of", pad_to_multiple_of, 1, allow_none=True)
        check_int_at_least("data.num_workers", num_workers, 0)
        check_lengths(max_length, max_prompt_length, truncation_mode)
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.num_workers = num_workers
        self.pad_to_multiple_of = pad_to_multiple_of
        self.padding_free = bool(padding_free)
        self.group_by_length = bool(group_by_length)
        self.truncation_mode = truncation_mode
        self.drop_truncated = drop_truncated
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.num_proc = num_proc
        self.tokenizer = None
        self.train_dataset: datasets.Dataset | None = None
        self.val_datasets: dict[str, datasets.Dataset] = {}
        #: pairs removed per split (all reasons), and the count per reason
        self.dropped: dict[str, int] = {}
        self.drop_reasons: dict[str, dict[str, int]] = {}
        #: kept pairs whose prompt / response truncation cut, per split (``{"prompt": n, "response": n}``)
        self.truncated: dict[str, dict[str, int]] = {}
        self._built: tuple[Any, datasets.Dataset, dict[str, datasets.Dataset]] | None = None
        self._tokenizer_key = ""
        self._reported = False

    # --- what subclasses provide -------------------------------------------------------------------------------
    def build_tokenizer(self):
        raise NotImplementedError

    def build_splits(self) -> tuple[datasets.Dataset, dict[str, datasets.Dataset]]:
        """Untokenised ``prompt``/``chosen``/``rejected`` text (optionally an int ``group``): the training set and
        the named validation sets. ``self.tokenizer`` is set when this runs. Rows dropped while building (e.g. a
        NaN score) are reported through :meth:`count_dropped`."""
        raise NotImplementedError

    def count_dropped(self, split: str, reason: str, count: int) -> None:
        """Record ``count`` rows of ``split`` removed for ``reason`` (reported once, at setup)."""
        if count:
            reasons = self.drop_reasons.setdefault(split, {})
            reasons[reason] = reasons.get(reason, 0) + int(count)
            self.dropped[split] = self.dropped.get(split, 0) + int(count)

    def describe_split(self, split: str) -> str:
        """How errors name a split: its name, and where subclasses know it, the file and YAML key it came from."""
        return split

    @property
    def pair_columns(self) -> tuple[str, ...]:
        """Per-pair columns kept through tokenisation and handed to the robust strategy (``ScoredPairs.columns``)."""
        return ("group",)

    # --- Lightning hooks ---------------------------------------------------------------------------------------
    @property
    def val_names(self) -> list[str]:
        return list(self.val_datasets)

    def prepare_data(self) -> None:
        """Download, build and tokenise once per node; the cache files are what ``setup`` finds on every rank."""
        self._build()

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        self.tokenizer, self.train_dataset, self.val_datasets = self._build()
        if not self._reported:
            self._report_drops()
            self._reported = True

    def _build(self) -> tuple[Any, datasets.Dataset, dict[str, datasets.Dataset]]:
        if self._built is None:
            fit_to_model_context(self)  # max_length against the attached module's models, before tokenising
            self.dropped, self.drop_reasons, self.truncated = {}, {}, {}
            self.tokenizer = self.build_tokenizer()
            self._tokenizer_key = Hasher.hash(self.tokenizer)  # once: hashing a large vocabulary takes a moment
            train, vals = self.build_splits()
            if "train" in vals:
                raise ValueError("a validation set cannot be named 'train'")
            if not vals:
                raise ValueError(f"{type(self).__name__} built no validation set")
            tokenized_train = self._tokenize("train", train)
            tokenized_vals = {name: self._tokenize(name, ds) for name, ds in vals.items()}
            self._built = (self.tokenizer, tokenized_train, tokenized_vals)
        return self._built

    # --- tokenisation ------------------------------------------------------------------------------------------
    def _tokenize_kwargs(self) -> dict[str, Any]:
        return {
            "tokenizer": self.tokenizer,
            "max_length": self.max_length,
            "max_prompt_length": self.max_prompt_length,
            "truncation_mode": self.truncation_mode,
            "drop_truncated": self.drop_truncated,
            "templated": self.templated,
        }

    def _tokenize(self, split: str, dataset: datasets.Dataset) -> datasets.Dataset:
        """Check, tokenise and filter one split through cached ``datasets.map`` calls; count what is dropped."""
        require_columns(dataset, PAIR_COLUMNS, split)
        if len(dataset) == 0:
            raise InputError(f"{self.describe_split(split)}: no pair is left ({self._reason_text(split)})")
        kwargs = self._tokenize_kwargs()
        settings = {k: v for k, v in kwargs.items() if k != "tokenizer"}
        key = Hasher.hash([dataset._fingerprint, self._tokenizer_key, settings, PIPELINE_VERSION])
        directory = self.cache_dir / "tokenized"
        directory.mkdir(parents=True, exist_ok=True)
        keep_columns = [c for c in self.pair_columns if c in dataset.column_names]
        tokenized = dataset.map(
            check_and_tokenize,
            fn_kwargs={"split": split, **kwargs},
            with_indices=True,
            remove_columns=[c for c in dataset.column_names if c not in keep_columns],
            cache_file_name=str(directory / f"{key}.arrow"),
            new_fingerprint=key,
            num_proc=self.num_proc,
            desc=f"tokenising {split}",
        )
        reasons = Counter(reason for reason in tokenized[DROP_COLUMN] if reason)
        cuts = Counter(part for cut in tokenized[TRUNCATION_COLUMN] if cut for part in cut.split(","))
        self.truncated[split] = {part: cuts.get(part, 0) for part in (PROMPT_CUT, RESPONSE_CUT)}
        for reason, count in sorted(reasons.items()):
            self.count_dropped(split, reason, count)
        self.dropped.setdefault(split, 0)
        kept = tokenized
        if reasons:
            kept = tokenized.filter(
                lambda reason: not reason,
                input_columns=DROP_COLUMN,
                cache_file_name=str(directory / f"{key}-kept.arrow"),
                new_fingerprint=f"{key}-kept",
                desc=f"dropping pairs ({split})",
            )
        if len(kept) == 0:
            raise InputError(f"{self.describe_split(split)}: no pair is left ({self._reason_text(split)})")
        return kept.select_columns([*TOKEN_COLUMNS, *keep_columns])

    def _reason_text(self, split: str) -> str:
        parts = []
        for reason, count in self.drop_reasons.get(split, {}).items():
            detail = f" (max_length={self.max_length})" if reason == NO_ROOM else ""
            parts.append(f"{reason}{detail}: {count}")
        return "; ".join(parts) or "nothing dropped"

    @rank_zero_only
    def _report_drops(self) -> None:
        """One warning per split that lost pairs, with the count per reason."""
        sizes = {"train": len(self.train_dataset), **{n: len(d) for n, d in self.val_datasets.items()}}
        for split, dropped in self.dropped.items():
            if not dropped:
                continue
            if split in sizes:
                total = dropped + sizes[split]
                log.warning("%s: dropped %d of %d pairs (%s)", split, dropped, total, self._reason_text(split))
            else:  # rows removed before pairs were formed (e.g. scored completions)
                log.warning("%s: dropped %s", split, self._reason_text(split))
        for split, cuts in self.truncated.items():
            if any(cuts.values()):
                log.warning("%s: %s", split, truncation_text(cuts, sizes[split], self._tokenize_kwargs()))

    # --- what others read and replace ----------------------------------------------------------------------------
    def collator(self) -> PairCollator:
        """The collator of every loader here; also what the reference precomputation batches rows with."""
        return PairCollator(self.tokenizer.pad_token_id, self.pad_to_multiple_of, self.padding_free)

    def splits(self) -> dict[str, datasets.Dataset]:
        """The tokenised splits by name: ``train`` and every validation set's name (no validation set is named
        ``train``)."""
        return {"train": self.train_dataset, **self.val_datasets}

    def replace_split(self, name: str, dataset: datasets.Dataset) -> None:
        """Swap a split (e.g. for one carrying reference log-prob columns) keeping its row order and name."""
        if name not in self.splits():
            raise KeyError(f"no split named {name!r}; the splits are {list(self.splits())}")
        if len(dataset) != len(self.splits()[name]):
            raise ValueError(f"split {name!r} has {len(self.splits()[name])} rows, its replacement {len(dataset)}")
        if name == "train":
            self.train_dataset = dataset
        else:
            self.val_datasets[name] = dataset

    # --- loaders -----------------------------------------------------------------------------------------------

    def train_dataloader(self) -> DataLoader:
        """Shuffled per epoch from (seed, epoch) and sharded by data-parallel rank; resumes mid-epoch exactly."""
        return ResumableDataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            sampler=self._train_sampler(),
            collate_fn=self.collator(),
            num_workers=self.num_workers,
            drop_last=False,
        )

    def _train_sampler(self) -> ResumableSampler:
        if not self.group_by_length:
            return ResumableSampler.for_trainer(self.train_dataset, self.trainer)
        lengths = [
            len(prompt) + max(len(chosen), len(rejected))
            for prompt, chosen, rejected in zip(*(self.train_dataset[c] for c in TOKEN_COLUMNS), strict=True)
        ]
        return LengthGroupedSampler.for_trainer(
            self.train_dataset, self.trainer, lengths=lengths, batch_size=self.batch_size
        )

    def val_dataloader(self) -> list[DataLoader]:
        return [
            DataLoader(ds, batch_size=self.val_batch_size, collate_fn=self.collator(), num_workers=self.num_workers)
            for ds in self.val_datasets.values()
        ]
