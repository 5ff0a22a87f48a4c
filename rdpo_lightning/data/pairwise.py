"""Pairwise preference data sets (``prompt``/``chosen``/``rejected``), from the Hub, local files or ``save_to_disk``
directories.

Every public layout (:mod:`~rdpo_lightning.data.formats`: explicit or implicit prompt, text or conversational, HH-RLHF
transcripts) goes through one path: detect the layout, rename the columns, render to text (chat template where the
data holds messages), then the base class's row checks, tokenisation and drop accounting.
"""

from __future__ import annotations

import logging
from typing import Any

import datasets
import numpy as np
from datasets.fingerprint import Hasher
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only

from rdpo_lightning.data.chat import RENDER_PROBLEM, SOURCE_ROW, is_messages, render_pair
from rdpo_lightning.data.datamodule import PreferenceDataModule
from rdpo_lightning.data.formats import detect_pair_layout
from rdpo_lightning.data.hub import load_table, take
from rdpo_lightning.data.rows import require_columns
from rdpo_lightning.data.source import DatasetSource
from rdpo_lightning.data.validation_sets import (
    GROUP_SET,
    ValPaths,
    check_set_names,
    check_val_fraction,
    group_set_name,
    missing_group,
    named_val_paths,
    split_by_group,
    stratified_holdout,
)
from rdpo_lightning.errors import InputError

log = logging.getLogger(__name__)
GROUP_COPY = "__rdpo_group"  # the group column when it is also the prompt or a response column

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


class PairwisePreferenceDataModule(DatasetSource, PreferenceDataModule):
    """Pairs read from ``path`` (a Hub data set name, a local directory, or a .json/.jsonl/.parquet/.csv file).

    Args:
        val_fraction, val_name: the in-distribution validation set, named ``val_name``: the held-out split of the
            same source (``val_split``), or else ``val_fraction`` of the training rows (seeded by ``seed``; 0: none).
        val_path: shifted validation sets beside it: a file (or directory, or Hub name: its ``train`` split), a
            list of them (named by their file stems) or a mapping name → path
            (:mod:`rdpo_lightning.data.validation_sets`).
        prompt_column, chosen_column, rejected_column: column names; ``prompt_column: null`` means the prompt is
            the shared beginning of chosen and rejected, cut after the last ``prompt_delimiter`` when given (HH-RLHF
            transcripts: ``"\\n\\nAssistant:"``). A missing prompt column with message lists or HH transcripts is
            detected as that layout (:func:`~rdpo_lightning.data.formats.detect_pair_layout`).
        group_column: an optional column whose values (ints or names) become the pairs' group ids for GroupDRO.
        val_per_group: with ``group_column``, also validate on each group of the held-out set of ``path``
            (``group=<value>``), so the worst case covers every group.
        max_train_samples, max_val_samples: use only the first rows (quick runs).

    The source (``path``, ``name``, ``revision``, ``tokenizer``, ``train_split``, ``val_split``,
    ``apply_chat_template``, ``seed``, ``max_length``: 1,024 here) is
    :class:`~rdpo_lightning.data.source.DatasetSource`'s, the batching and truncation arguments (``batch_size``,
    ``padding_free``, ...) :class:`~rdpo_lightning.data.PreferenceDataModule`'s.
    """

    def __init__(
        self,
        *,
        val_path: ValPaths = None,
        val_fraction: float = 0.05,
        val_name: str = "held_out",
        prompt_column: str | None = "prompt",
        chosen_column: str = "chosen",
        rejected_column: str = "rejected",
        group_column: str | None = None,
        val_per_group: bool = True,
        prompt_delimiter: str | None = None,
        max_train_samples: int | None = None,
        max_val_samples: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.val_paths = named_val_paths(val_path)
        check_val_fraction(val_fraction, self.val_split, self.val_paths)
        #: an in-distribution set from the training source (``val_split`` or ``val_fraction``), served first
        self.has_held_out = self.val_split is not None or val_fraction > 0
        held_out = [(val_name, "data.val_name")] if self.has_held_out else []
        check_set_names([*held_out, *((name, f"data.val_path[{name!r}]") for name in self.val_paths)])
        self.val_path = val_path
        self.val_fraction, self.val_name = val_fraction, val_name
        self.columns = {"prompt": prompt_column, "chosen": chosen_column, "rejected": rejected_column}
        self.group_column = group_column
        self.val_per_group = bool(val_per_group) and group_column is not None and self.has_held_out
        self.prompt_delimiter = prompt_delimiter
        self.max_train_samples, self.max_val_samples = max_train_samples, max_val_samples
        self.group_names: list[str] | None = None
        #: per split, the detected layout in one line (which columns became the prompt and the responses)
        self.layouts: dict[str, str] = {}
        #: held-out pairs whose prompt also occurs in training (when ``val_fraction`` carves the held-out set)
        self.shared_prompts = 0

    def describe_split(self, split: str) -> str:
        source = getattr(self, "_sources", {}).get(split)
        return f"{split} ({source})" if source else split

    # --- loading -----------------------------------------------------------------------------------------------
    def _load(self) -> tuple[datasets.Dataset, dict[str, datasets.Dataset]]:
        """The training rows and each validation set's rows by name, the in-distribution set first."""
        text = [c for c in self.columns.values() if c is not None]
        train = with_source_rows(load_table(self.path, self.train_split, self.name, self.revision, text_columns=text))
        self._sources = {"train": f"data.path={self.path}"}
        vals = {}
        if self.val_split is not None:
            vals[self.val_name] = load_table(self.path, self.val_split, self.name, self.revision, text_columns=text)
        elif self.val_fraction > 0:
            train, vals[self.val_name] = self._hold_out(train)
        if vals:
            self._sources[self.val_name] = f"data.path={self.path}"
        for name, path in self.val_paths.items():
            vals[name] = load_table(path, "train", self.name, self.revision, "data.val_path", text_columns=text)
            self._sources[name] = f"data.val_path={path}"
        vals = {name: take(with_source_rows(val), self.max_val_samples) for name, val in vals.items()}
        return take(train, self.max_train_samples), vals

    def _hold_out(self, train: datasets.Dataset) -> tuple[datasets.Dataset, datasets.Dataset]:
        """``val_fraction`` of the rows, stratified by group when each group is validated (so each has a set)."""
        if not (self.val_per_group and self.group_column in train.column_names):
            parts = train.train_test_split(test_size=self.val_fraction, seed=self.seed)
            return parts["train"], parts["test"]
        rows, held_out, unvalidated = stratified_holdout(train[self.group_column], self.val_fraction, self.seed)
        if unvalidated:
            rank_zero_only(log.warning)(
                "data.group_column %r: groups %s have one pair each, kept for training: no validation set",
                self.group_column, sorted(map(str, unvalidated)),
            )  # fmt: skip
        return train.select(rows), train.select(held_out)

    def _normalise(
        self, split: str, dataset: datasets.Dataset, with_groups: bool, group_sets: bool = False
    ) -> datasets.Dataset:
        """Rename to prompt/chosen/rejected(/group), render to text, and count rows that cannot be rendered.
        ``with_groups``: the training set (group ids); ``group_sets``: a validation set to cut by group
        (:data:`GROUP_SET` names each pair's set)."""
        source = self._sources[split]
        layout = detect_pair_layout(dataset, *self.columns.values(), self.prompt_delimiter, f"{split} ({source})")
        self.layouts[split] = layout.describe()
        rank_zero_info(f"{split} ({source}): {self.layouts[split]}")
        wanted = layout.columns
        keys = [f"data.{role}_column" for role in wanted]
        if (with_groups or group_sets) and self.group_column is not None:
            wanted["group"] = self.group_column
            keys.append("data.group_column")
        if group_sets and self.group_column not in dataset.column_names:
            keys[-1] += " (each group a validation set: data.val_per_group false to not)"
        require_columns(dataset.remove_columns(SOURCE_ROW), wanted.values(), f"{split} ({source})", keys)
        shared = wanted.get("group")
        if shared is not None and shared in [c for role, c in wanted.items() if role != "group"]:
            dataset = dataset.add_column(GROUP_COPY, dataset[shared])  # e.g. the prompt itself as the group
            wanted["group"] = GROUP_COPY
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
            where = f"{split} ({source})"
            self._check_group_values(where, group, dataset[SOURCE_ROW], per_group_hint=group_sets)
            if with_groups:
                rendered = rendered.add_column("group", self._group_ids(where, group))
            else:
                rendered = rendered.add_column(GROUP_SET, [group_set_name(value) for value in group])
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

    def _check_group_values(self, where: str, values: list, source_rows: list[int], per_group_hint: bool) -> None:
        missing = [i for i, v in enumerate(values) if missing_group(v)]
        if missing:
            row = source_rows[missing[0]]
            hint = " (each group of it is a validation set: data.val_per_group false to not)" if per_group_hint else ""
            raise InputError(f"{where}, row {row}: data.group_column {self.group_column!r} is null or NaN{hint}")

    def _group_ids(self, where: str, values: list) -> list[int]:
        """Integer groups pass through; names become indices into the sorted names seen in training."""
        if all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            return list(values)
        names = [str(v) for v in values]
        if self.group_names is None:
            self.group_names = sorted(set(names))
        index = {n: i for i, n in enumerate(self.group_names)}
        unknown = sorted(set(names) - set(index))
        if unknown:
            raise InputError(f"{where}: groups {unknown} do not occur in training ({self.group_names})")
        return [index[n] for n in names]

    def build_splits(self) -> tuple[datasets.Dataset, dict[str, datasets.Dataset]]:
        train, sources = self._load()
        self.group_names = None
        train = self._normalise("train", train, with_groups=True)
        vals = {}
        for name, rows in sources.items():
            cut = self.val_per_group and name == self.val_name  # the held-out set of the source, cut by group
            vals[name] = self._normalise(name, rows, with_groups=False, group_sets=cut)
            if cut:
                groups = split_by_group(vals[name])
                check_set_names([*((n, "data.val_path") for n in sources), *((g, "data.group_column") for g in groups)])
                vals[name] = vals[name].remove_columns(GROUP_SET)
                vals.update(groups)
                self._sources.update(dict.fromkeys(groups, f"data.group_column={self.group_column} of {name}"))
        self._log_sets(vals)
        if self.val_split is None and self.has_held_out:
            self._report_shared_prompts(train, vals[self.val_name])
        return train, vals

    def _log_sets(self, vals: dict[str, datasets.Dataset]) -> None:
        """One line saying which validation sets there are and where each comes from (before tokenisation)."""
        origin = dict(self._sources)
        if self.has_held_out:
            held_out = (
                f"data.val_split={self.val_split}" if self.val_split else f"data.val_fraction={self.val_fraction}"
            )
            origin[self.val_name] = f"{held_out} of data.path={self.path}"
        described = (f"{name} ({len(pairs)} pairs, {origin[name]})" for name, pairs in vals.items())
        rank_zero_info("validation sets: " + ", ".join(described))

    def _report_shared_prompts(self, train: datasets.Dataset, val: datasets.Dataset) -> None:
        """Duplicate prompts are kept (several pairs per prompt are normal), but ``val_fraction`` holds out rows, not
        prompts: held-out pairs whose prompt also trains are counted and logged, since they flatter held-out metrics."""
        seen = set(train["prompt"])
        self.shared_prompts = sum(prompt in seen for prompt in val["prompt"])
        if self.shared_prompts:
            rank_zero_only(log.warning)(
                "%s: %d of %d held-out pairs share their prompt with training pairs (data.val_fraction holds out "
                "rows, not prompts; for a clean held-out set give data.val_split, or data.val_path with "
                "data.val_fraction 0)",
                self.val_name, self.shared_prompts, len(val),
            )  # fmt: skip
