"""Multi-attribute scored completions (HelpSteer2 style) → preference pairs at any mixture α.

Each row is one completion of a prompt with K per-attribute scores; several rows share a prompt. At a mixture α
the completions of a prompt are ranked by r(α) (convex Σ α_k s_k or geometric Π s_k^α_k) and paired, as the
paper builds pairs from ArmoRM objectives:

* ``pairing="best_vs_worst"`` (the authors' code): the completion with the highest r(α) is chosen, the lowest
  rejected (first one on ties within the best or the worst); a prompt whose best and worst tie is skipped.
* ``pairing="bradley_terry"``: one pair per prompt (the two completions when there are two, else two drawn at random
  once per prompt and shared by every mixture), labelled by Bradley–Terry on r(α) with ``label_temperature``
  (null: the higher r(α) wins, ties skipped).

This is also how a user's own generations scored by a classifier (the paper's emotion task) are read.
"""

from __future__ import annotations

import json
import math
from typing import Any

import datasets
import numpy as np
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from rdpo_lightning.checks import check_fraction
from rdpo_lightning.data.chat import is_messages, render_prompt_and_responses
from rdpo_lightning.data.column_paths import is_path, read_paths
from rdpo_lightning.data.hub import load_table
from rdpo_lightning.data.mixture_pairs import MixturePairsDataModule, PairRandomness, PromptSplits
from rdpo_lightning.data.pairing import PromptCompletions
from rdpo_lightning.data.rows import require_columns
from rdpo_lightning.data.source import DatasetSource
from rdpo_lightning.errors import InputError

NUMERIC = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32", "float64")

#: drop reasons, as counted and logged
NULL_SCORE = "completions with a null, NaN, N/A or infinite score"
EMPTY_RESPONSE = "completions with an empty or null response"
NULL_PROMPT = "completions with a null prompt"
TOO_FEW = "prompts with fewer than two usable completions"


#: text that means "no score" (UltraFeedback rates some completions "N/A"): skipped and counted like a null
MISSING_SCORE_TEXT = frozenset({"", "n/a", "na", "nan", "null", "none", "#n/a", "<na>"})


def is_score(value: Any) -> bool:
    """A number, a null, text that reads as a number (a CSV column with one stray word is all text) or says there is
    none (:data:`MISSING_SCORE_TEXT`); not a bool."""
    if isinstance(value, str):
        if value.strip().lower() in MISSING_SCORE_TEXT:
            return True
        try:
            float(value)
        except ValueError:
            return False
        return True
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def score_value(value: Any) -> float:
    """A checked score (:func:`is_score`) as a float; NaN when it is missing."""
    if value is None or (isinstance(value, str) and value.strip().lower() in MISSING_SCORE_TEXT):
        return math.nan
    return float(value)


class ScoredCompletionsDataModule(DatasetSource, MixturePairsDataModule):
    """Pairs built at training and validation mixtures from scored completions at ``path``.

    Args:
        score_columns: the attribute columns, in order; mixtures weigh them. Each row of the source is one
            completion: ``prompt_column``, ``response_column`` and one numeric column per attribute (HelpSteer2:
            ``nvidia/HelpSteer2``).
        pairing: how pairs are formed (here ``best_vs_worst`` by default; module docstring). The mixtures
            (``attribute_a``, ``train_alpha``, ``val_mixtures``, ...; several training mixtures become groups) are
            :class:`~rdpo_lightning.data.mixture_pairs.MixturePairsDataModule`'s, the batching and truncation
            arguments :class:`~rdpo_lightning.data.PreferenceDataModule`'s.
        val_path, val_fraction: validation prompts come from ``val_split`` of the source, from ``val_path``, or
            (neither given) ``val_fraction`` of the prompts are held out (seeded by ``seed``).
        max_train_prompts, max_val_prompts: use only the first prompts (quick runs).

    The source (``path``, ``name``, ``revision``, ``tokenizer``, ``train_split``, ``val_split``,
    ``apply_chat_template``: prompt and completions alike, ``seed``, ``max_length``: 1,024 here) is
    :class:`~rdpo_lightning.data.source.DatasetSource`'s.
    """

    def __init__(
        self,
        *,
        score_columns: list[str],
        prompt_column: str = "prompt",
        response_column: str = "response",
        pairing: str = "best_vs_worst",
        val_path: str | None = None,
        val_fraction: float = 0.1,
        max_train_prompts: int | None = None,
        max_val_prompts: int | None = None,
        **kwargs: Any,
    ) -> None:
        if not score_columns:
            raise ValueError("data.score_columns must name at least one attribute column")
        if len(set(score_columns)) != len(score_columns):
            raise ValueError(f"data.score_columns repeats a column: {score_columns}")
        check_fraction("data.val_fraction", val_fraction)
        super().__init__(_attributes=score_columns, pairing=pairing, **kwargs)
        #: score columns that must be > 0: those a geometric mixture weighs (r = Π s_k^α_k, taken in log space)
        self._positive_scores = [
            k
            for k in range(len(score_columns))
            if self.mixture_kind == "geometric"
            and any(m.weights[k] > 0 for m in self.train_mixtures + self.val_mixtures)
        ]
        self.score_columns = list(score_columns)
        self.prompt_column, self.response_column = prompt_column, response_column
        self.val_path, self.val_fraction = val_path, val_fraction
        self.max_train_prompts, self.max_val_prompts = max_train_prompts, max_val_prompts
        self.templated: bool | None = None  # decided from the data (apply_chat_template null) when it is read

    # --- grouping rows into prompts ----------------------------------------------------------------------------
    def _read_columns(self, table: datasets.Dataset, where: str) -> tuple[dict[str, list], list[str] | None]:
        """The prompt, response and score values, by configured name (a column or a column path,
        :mod:`~rdpo_lightning.data.column_paths`), and how errors name each entry (None: ``row i``)."""
        keys = {self.prompt_column: "data.prompt_column", self.response_column: "data.response_column"}
        keys.update({column: "data.score_columns" for column in self.score_columns})
        if any(is_path(name, table.column_names) for name in keys):
            values, names = read_paths(table, keys, where)
            rank_zero_info(
                f"{where}: {len(names)} completions from {len(table)} rows through column paths: prompt "
                f"{self.prompt_column!r}, response {self.response_column!r}, scores {self.score_columns}"
            )
            self._check_scores(values, {}, names, where)
            return values, names
        require_columns(table, list(keys), where, list(keys.values()))
        values = table.select_columns(list(keys)).to_dict()
        self._check_scores(values, table.features, None, where)
        return values, None

    def _check_scores(self, values: dict[str, list], features: Any, names: list[str] | None, where: str) -> None:
        for column in self.score_columns:
            dtype = getattr(features.get(column), "dtype", None) if features else None
            if dtype in (*NUMERIC, "null"):
                continue
            for row, value in enumerate(values[column]):  # the first value that is not a number
                if not is_score(value):
                    kind = dtype or type(value).__name__
                    raise InputError(
                        f"{where}, {names[row] if names else f'row {row}'}: score column {column!r} "
                        f"(data.score_columns) holds {value!r} ({kind}); expected numbers (null, NaN or 'N/A' for "
                        "a missing score)"
                    )

    def _uses_template(self, prompts: list, names: list[str] | None, where: str) -> bool:
        """``apply_chat_template`` null: the template when the prompts are chat messages (as pairwise data)."""
        first = next((row for row, prompt in enumerate(prompts) if is_messages(prompt)), None)
        use = first is not None if self.apply_chat_template is None else self.apply_chat_template
        if first is not None and not use:
            raise InputError(
                f"{where}, {names[first] if names else f'row {first}'}: data.prompt_column {self.prompt_column!r} "
                "holds chat messages but data.apply_chat_template is false"
            )
        if use and getattr(self.tokenizer, "chat_template", None) is None:
            why = "data.apply_chat_template is true"
            if first is not None:
                row = names[first] if names else f"row {first}"
                why = f"{where}, {row}: data.prompt_column {self.prompt_column!r} holds chat messages"
            raise InputError(
                f"{why} but tokenizer {self.tokenizer_name} (data.tokenizer) has no chat template; use a tokenizer "
                "with one, or give the prompts as text"
            )
        if self.templated is not None and use != self.templated:
            raise InputError(f"{where}: chat templating differs between the splits; set data.apply_chat_template")
        self.templated = use
        return use

    def group_completions(self, table: datasets.Dataset, label: str, source: str = "") -> list[PromptCompletions]:
        """Rows → one :class:`PromptCompletions` per prompt (first-appearance order); bad rows counted under
        ``label``; errors name ``source`` (e.g. ``data.val_path=...``) and the row."""
        where = f"{label} ({source or f'data.path={self.path}'})"
        columns, names = self._read_columns(table, where)
        prompts, responses = columns[self.prompt_column], columns[self.response_column]
        scores = np.array([[score_value(v) for v in columns[c]] for c in self.score_columns], dtype=np.float64)
        scores = scores.T.reshape(len(prompts), len(self.score_columns))
        use_template = self._uses_template(prompts, names, where)
        order: dict[str, int] = {}
        raw_prompts: list[Any] = []
        members: list[list[int]] = []
        for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            at = f"{where}, {names[row] if names else f'row {row}'}"
            if prompt is None:
                self.count_dropped(label, NULL_PROMPT, 1)
                continue
            if not isinstance(prompt, str) and not is_messages(prompt):
                raise InputError(
                    f"{at}: data.prompt_column {self.prompt_column!r} holds {type(prompt).__name__} "
                    f"({str(prompt)[:60]!r}); expected text or a list of chat messages"
                )
            if response is not None and not isinstance(response, str):
                raise InputError(
                    f"{at}: data.response_column {self.response_column!r} holds {type(response).__name__} "
                    f"({str(response)[:60]!r}); expected text"
                )
            if response is None or not response.strip():
                self.count_dropped(label, EMPTY_RESPONSE, 1)
                continue
            if not np.isfinite(scores[row]).all():
                self.count_dropped(label, NULL_SCORE, 1)
                continue
            for k in self._positive_scores:
                if scores[row, k] <= 0:
                    raise InputError(
                        f"{at}: score column {self.score_columns[k]!r} is {scores[row, k]:g}; a "
                        "geometric mixture (data.mixture_kind) needs scores > 0 in every column a mixture weighs"
                    )
            key = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)
            if key not in order:
                order[key] = len(members)
                raw_prompts.append(prompt)
                members.append([])
            members[order[key]].append(row)
        grouped = []
        for prompt, rows in zip(raw_prompts, members, strict=True):
            if len(rows) < 2:
                self.count_dropped(label, TOO_FEW, 1)
                continue
            texts = [responses[r] for r in rows]
            if use_template:
                prompt, texts = render_prompt_and_responses(prompt, texts, self.tokenizer)
            grouped.append(PromptCompletions(prompt, texts, scores[rows]))
        return grouped

    # --- splits ------------------------------------------------------------------------------------------------
    def _prompt_groups(self) -> tuple[list[PromptCompletions], list[PromptCompletions]]:
        text = [self.prompt_column, self.response_column]
        self.templated = None
        train_table = load_table(self.path, self.train_split, self.name, self.revision, text_columns=text)
        if self.val_path is not None or self.val_split is not None:
            train = self.group_completions(train_table, "train source rows")
            if self.val_path is not None:
                val_table = load_table(self.val_path, self.val_split or "train", key="data.val_path", text_columns=text)
                val = self.group_completions(val_table, "validation source rows", f"data.val_path={self.val_path}")
            else:
                val_table = load_table(self.path, self.val_split, self.name, self.revision, text_columns=text)
                val = self.group_completions(val_table, "validation source rows")
        else:
            groups = self.group_completions(train_table, "source rows")
            if len(groups) < 2:
                raise InputError(
                    f"data.path={self.path}: {len(groups)} usable prompt(s) ({self._reason_text('source rows')}); "
                    "need 2 to hold one out"
                )
            order = np.random.default_rng([self.seed, 7]).permutation(len(groups))
            n_val = min(max(1, math.ceil(self.val_fraction * len(groups))), len(groups) - 1)
            val = [groups[i] for i in sorted(order[:n_val])]
            train = [groups[i] for i in sorted(order[n_val:])]
        train = train[: self.max_train_prompts] if self.max_train_prompts is not None else train
        val = val[: self.max_val_prompts] if self.max_val_prompts is not None else val
        if not train or not val:
            dropped = "; ".join(f"{label}: {self._reason_text(label)}" for label in self.drop_reasons) or "none dropped"
            raise InputError(
                f"data.path={self.path}: no usable prompts for {'training' if not train else 'validation'} ({dropped})"
            )
        return train, val

    def prompt_splits(self) -> PromptSplits:
        train, val = self._prompt_groups()
        randomness = PairRandomness(
            compared=np.random.default_rng([self.seed, 1]),
            assignment=np.random.default_rng([self.seed, 0]),
            train_labels=np.random.default_rng([self.seed, 2]),
            val_labels=lambda i: np.random.default_rng([self.seed, 3, i]),
        )
        return PromptSplits(train, val, randomness)
