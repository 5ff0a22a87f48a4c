"""Pairwise preference data sets (``prompt``/``chosen``/``rejected``), from the Hub, local files or ``save_to_disk``
directories.

Every public layout (:mod:`~rdpo_lightning.data.formats`: explicit or implicit prompt, text or conversational, HH-RLHF
transcripts) goes through one path: detect the layout, rename the columns, render to text (chat template where the
data holds messages), then the base class's row checks, tokenisation and drop accounting.
"""

from __future__ import annotations

import logging
import math

import datasets
import numpy as np
from datasets.fingerprint import Hasher
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only

from rdpo_lightning.checks import check_fraction
from rdpo_lightning.data.chat import RENDER_PROBLEM, SOURCE_ROW, is_messages, render_pair
from rdpo_lightning.data.datamodule import PreferenceDataModule, batching_arguments
from rdpo_lightning.data.formats import detect_pair_layout
from rdpo_lightning.data.hub import load_table, take
from rdpo_lightning.data.rows import require_columns
from rdpo_lightning.data.tokenizer import load_tokenizer
from rdpo_lightning.errors import InputError

log = logging.getLogger(__name__)

TEXT_FEATURES = datasets.Features(
    {
        "prompt": datasets.Value("string"),
        "chosen": datasets.Value("string"),
        "rejected": datasets.Value("string"),
        RENDER_PROBLEM: datasets.Value("string"),
    }
)


def with_source_rows(dataset: datasets.Dataset) -> datasets.Dataset:
    """Number the rows as they stand in their file, so an error names a row the user can find after shuffling."""
    if SOURCE_ROW in dataset.column_names:
        return dataset
    fingerprint = Hasher.hash([dataset._fingerprint, SOURCE_ROW])
    return dataset.add_column(SOURCE_ROW, np.arange(len(dataset)), new_fingerprint=fingerprint)


def holds_chat_messages(dataset: datasets.Dataset, column: str) -> bool:
    """A column of message lists (or, where a column mixes types, any value that is one): it needs a chat template.
    A column of plain lists or numbers is not: the row checks name its first bad value."""
    feature = dataset.features[column]
    if isinstance(feature, (datasets.List, datasets.LargeList)):
        return isinstance(feature.feature, dict) and {"role", "content"} <= set(feature.feature)
    if isinstance(feature, datasets.Json):
        return any(is_messages(value) for value in dataset[column])
    return False


class PairwisePreferenceDataModule(PreferenceDataModule):
    """Pairs read from ``path`` (a Hub data set name, a local directory, or a .json/.jsonl/.parquet/.csv file).

    Args:
        path, name, revision: what ``datasets.load_dataset`` loads (``name`` is the Hub config).
        tokenizer: tokenizer name or path (usually the policy's).
        train_split: the training split (``train_prefs`` for UltraFeedback binarized).
        val_split / val_path: the held-out split of the same source, or another file/Hub name (its ``val_split`` or
            ``train``); with neither, ``val_fraction`` of the training rows are held out (seeded by ``seed``).
        prompt_column, chosen_column, rejected_column: column names; ``prompt_column: null`` means the prompt is
            the shared beginning of chosen and rejected, cut after the last ``prompt_delimiter`` when given (HH-RLHF
            transcripts: ``"\\n\\nAssistant:"``). A missing prompt column with message lists or HH transcripts is
            detected as that layout (:func:`~rdpo_lightning.data.formats.detect_pair_layout`).
        group_column: an optional column whose values (ints or names) become the pairs' group ids for GroupDRO.
        apply_chat_template: render through the tokenizer's chat template; null (default): when the data holds
            chat messages.
        max_train_samples, max_val_samples: use only the first rows (quick runs).
        val_name: the readable name of the validation set in metric names.
    """

    def __init__(
        self,
        path: str,
        tokenizer: str,
        name: str | None = None,
        revision: str | None = None,
        train_split: str = "train",
        val_split: str | None = None,
        val_path: str | None = None,
        val_fraction: float = 0.05,
        val_name: str = "held_out",
        prompt_column: str | None = "prompt",
        chosen_column: str = "chosen",
        rejected_column: str = "rejected",
        group_column: str | None = None,
        prompt_delimiter: str | None = None,
        apply_chat_template: bool | None = None,
        max_train_samples: int | None = None,
        max_val_samples: int | None = None,
        seed: int = 0,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        max_length: int = 1024,
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
        super().__init__(**batching_arguments(locals()))
        check_fraction("data.val_fraction", val_fraction)
        if val_name == "train":
            raise ValueError("data.val_name cannot be 'train'")
        self.path, self.name, self.revision = path, name, revision
        self.tokenizer_name = tokenizer
        self.train_split, self.val_split, self.val_path = train_split, val_split, val_path
        self.val_fraction, self.val_name = val_fraction, val_name
        self.columns = {"prompt": prompt_column, "chosen": chosen_column, "rejected": rejected_column}
        self.group_column = group_column
        self.prompt_delimiter = prompt_delimiter
        self.apply_chat_template = apply_chat_template
        self.max_train_samples, self.max_val_samples = max_train_samples, max_val_samples
        self.seed = seed
        self.group_names: list[str] | None = None
        #: per split, the detected layout in one line (which columns became the prompt and the responses)
        self.layouts: dict[str, str] = {}
        #: held-out pairs whose prompt also occurs in training (when ``val_fraction`` carves the held-out set)
        self.shared_prompts = 0

    def build_tokenizer(self):
        return load_tokenizer(self.tokenizer_name)

    def describe_split(self, split: str) -> str:
        source = getattr(self, "_sources", {}).get(split)
        return f"{split} ({source})" if source else split

    # --- loading -----------------------------------------------------------------------------------------------
    def _load(self) -> tuple[datasets.Dataset, datasets.Dataset]:
        text = [c for c in self.columns.values() if c is not None]
        train = load_table(self.path, self.train_split, self.name, self.revision, text_columns=text)
        self._sources = {"train": f"data.path={self.path}", self.val_name: f"data.path={self.path}"}
        if self.val_path is not None:
            val_split = self.val_split or "train"
            val = load_table(self.val_path, val_split, self.name, self.revision, "data.val_path", text_columns=text)
            self._sources[self.val_name] = f"data.val_path={self.val_path}"
        elif self.val_split is not None:
            val = load_table(self.path, self.val_split, self.name, self.revision, text_columns=text)
        else:
            parts = with_source_rows(train).train_test_split(test_size=self.val_fraction, seed=self.seed)
            train, val = parts["train"], parts["test"]
        train, val = with_source_rows(train), with_source_rows(val)
        return take(train, self.max_train_samples), take(val, self.max_val_samples)

    def _normalise(self, split: str, dataset: datasets.Dataset, with_groups: bool) -> datasets.Dataset:
        """Rename to prompt/chosen/rejected(/group), render to text, and count rows that cannot be rendered."""
        source = self._sources[split]
        layout = detect_pair_layout(dataset, *self.columns.values(), self.prompt_delimiter, f"{split} ({source})")
        self.layouts[split] = layout.describe()
        rank_zero_info(f"{split} ({source}): {self.layouts[split]}")
        wanted = layout.columns
        keys = [f"data.{role}_column" for role in wanted]
        if with_groups and self.group_column is not None:
            wanted["group"] = self.group_column
            keys.append("data.group_column")
        require_columns(dataset.remove_columns(SOURCE_ROW), wanted.values(), f"{split} ({source})", keys)
        dataset = dataset.select_columns([*wanted.values(), SOURCE_ROW])
        dataset = dataset.rename_columns({c: role for role, c in wanted.items() if c != role})
        group = list(dataset["group"]) if "group" in dataset.column_names else None
        if group is not None:
            dataset = dataset.remove_columns("group")
        use_template = self._uses_template(dataset, f"{split} ({source})")
        if with_groups:
            self.templated = use_template
        elif use_template != self.templated:
            raise InputError(
                f"{split}: chat templating differs between the training ({self.templated}) and validation "
                f"({use_template}) data; set data.apply_chat_template explicitly"
            )
        rendered = dataset.map(
            render_pair,
            fn_kwargs={
                "split": f"{split} ({source})",
                "columns": {role: column for role, column in wanted.items() if role != "group"},
                "tokenizer": self.tokenizer,
                "use_chat_template": use_template,
                "prompt_delimiter": layout.prompt_delimiter,
            },
            with_indices=True,
            remove_columns=dataset.column_names,
            features=TEXT_FEATURES,
            num_proc=self.num_proc,
            desc=f"rendering {split}",
        )
        if group is not None:
            rendered = rendered.add_column("group", self._group_ids(f"{split} ({source})", group, dataset[SOURCE_ROW]))
        problems = [p for p in rendered[RENDER_PROBLEM] if p]
        for problem in sorted(set(problems)):
            self.count_dropped(split, problem, problems.count(problem))
        if problems:
            rendered = rendered.filter(lambda p: not p, input_columns=RENDER_PROBLEM, desc=f"dropping rows ({split})")
        return rendered.remove_columns(RENDER_PROBLEM)

    def _uses_template(self, dataset: datasets.Dataset, where: str) -> bool:
        holds_messages = [c for c in ("chosen", "rejected") if holds_chat_messages(dataset, c)]
        use = bool(holds_messages) if self.apply_chat_template is None else self.apply_chat_template
        if use and getattr(self.tokenizer, "chat_template", None) is None:
            why = "data.apply_chat_template is true"
            if holds_messages:  # name the first row that does
                role = holds_messages[0]
                row = next((i for i, value in enumerate(dataset[role]) if isinstance(value, list)), 0)
                why = f"{where}, row {dataset[row][SOURCE_ROW]}: column {self.columns[role]!r} holds chat messages"
            raise InputError(
                f"{why} but tokenizer {self.tokenizer_name} (data.tokenizer) has no chat template; use a tokenizer "
                "with one, or give the data as text"
            )
        return use

    def _group_ids(self, where: str, values: list, source_rows: list[int]) -> list[int]:
        """Integer groups pass through; names become indices into the sorted names seen in training."""
        if all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            return list(values)
        missing = [i for i, v in enumerate(values) if v is None or (isinstance(v, float) and math.isnan(v))]
        if missing:
            row = source_rows[missing[0]]
            raise InputError(f"{where}, row {row}: data.group_column {self.group_column!r} is null or NaN")
        names = [str(v) for v in values]
        if self.group_names is None:
            self.group_names = sorted(set(names))
        index = {n: i for i, n in enumerate(self.group_names)}
        unknown = sorted(set(names) - set(index))
        if unknown:
            raise InputError(f"{where}: groups {unknown} do not occur in training ({self.group_names})")
        return [index[n] for n in names]

    def build_splits(self) -> tuple[datasets.Dataset, dict[str, datasets.Dataset]]:
        train, val = self._load()
        self.group_names = None
        train = self._normalise("train", train, with_groups=True)
        val = self._normalise(self.val_name, val, with_groups=False)
        if self.val_path is None and self.val_split is None:
            self._report_shared_prompts(train, val)
        return train, {self.val_name: val}

    def _report_shared_prompts(self, train: datasets.Dataset, val: datasets.Dataset) -> None:
        """Duplicate prompts are kept (several pairs per prompt are normal), but ``val_fraction`` holds out rows, not
        prompts: held-out pairs whose prompt also trains are counted and logged, since they flatter held-out metrics."""
        seen = set(train["prompt"])
        self.shared_prompts = sum(prompt in seen for prompt in val["prompt"])
        if self.shared_prompts:
            rank_zero_only(log.warning)(
                "%s: %d of %d held-out pairs share their prompt with training pairs (data.val_fraction holds out "
                "rows, not prompts; give data.val_path or data.val_split for a clean held-out set)",
                self.val_name, self.shared_prompts, len(val),
            )  # fmt: skip
