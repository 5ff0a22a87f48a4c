"""Batching tokenised pairs into the one concatenated (2B, T) forward the module runs.

Rows 0..B−1 hold prompt+chosen, rows B..2B−1 prompt+rejected, right-padded; ``labels`` repeat the ids with the
prompt and the padding set to −100 so only response tokens are scored. With ``padding_free`` the same 2B sequences
are packed into fewer rows instead (see :mod:`rdpo_lightning.data.packing`). Precomputed reference log-probs
(``reference_chosen_logps`` / ``reference_rejected_logps`` columns) pass through as (B,) float tensors, and the module
then skips the reference forward. Any other per-pair column (e.g. ``group``) passes through under ``columns``, for the
robust strategy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rdpo_lightning.batch_layout import IGNORE_INDEX, SCORED_POSITIONS, scored_positions
from rdpo_lightning.data.packing import pack_sequences
from rdpo_lightning.data.tokenize import TOKEN_COLUMNS
from rdpo_lightning.errors import InputError

#: precomputed reference log-probs (see ``rdpo_lightning.training.reference_cache``), passed through when a dataset has
#: them
REFERENCE_COLUMNS = ("reference_chosen_logps", "reference_rejected_logps")


class PairCollator:
    """Pads to the longest row of the batch (rounded up to ``pad_to_multiple_of``), or packs the rows
    (``padding_free``)."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None, padding_free: bool = False) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.padding_free = padding_free

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows, prompt_lengths = [], []
        for key in ("chosen_ids", "rejected_ids"):
            for ex in examples:
                rows.append(list(ex["prompt_ids"]) + list(ex[key]))
                prompt_lengths.append(len(ex["prompt_ids"]))
        if self.padding_free:
            batch = pack_sequences(rows, prompt_lengths, self.pad_token_id, self.pad_to_multiple_of)
        else:
            batch = self._pad(rows, prompt_lengths)
        batch[SCORED_POSITIONS] = scored_positions(batch["labels"])
        for column in REFERENCE_COLUMNS:
            if column in examples[0]:
                batch[column] = torch.tensor([float(ex[column]) for ex in examples], dtype=torch.float64)
        columns = {name: per_pair_tensor([ex[name] for ex in examples], name) for name in extra_columns(examples[0])}
        if columns:
            batch["columns"] = columns
        return batch

    def _pad(self, rows: list[list[int]], prompt_lengths: list[int]) -> dict[str, torch.Tensor]:
        length = max(len(r) for r in rows)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        for i, (row, plen) in enumerate(zip(rows, prompt_lengths, strict=True)):
            ids = torch.tensor(row, dtype=torch.long)
            input_ids[i, : len(row)] = ids
            attention_mask[i, : len(row)] = 1
            labels[i, plen : len(row)] = ids[plen:]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def extra_columns(example: dict[str, Any]) -> list[str]:
    """The numeric per-pair data columns beyond the tokens and the reference log-probs (e.g. ``group``, or the K
    ``score_margins`` of a pair): handed to the robust strategy as ``ScoredPairs.columns``. (Text columns, e.g. a drop
    reason, have no tensor form.)"""
    skip = (*TOKEN_COLUMNS, *REFERENCE_COLUMNS)
    return [name for name, value in example.items() if name not in skip and (is_number(value) or is_vector(value))]


def is_number(value: Any) -> bool:
    return isinstance(value, (bool, int, float))


def is_vector(value: Any) -> bool:
    """A list of numbers (one per attribute, say)."""
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(is_number(v) for v in value)


def per_pair_tensor(values: list[Any], name: str = "") -> torch.Tensor:
    """Integers (and booleans) as int64, anything else numeric as float64 (lossless; consumers cast); lists of K
    numbers as a (B, K) float64 tensor, refused when the pairs' lists differ in length."""
    if is_vector(values[0]):
        lengths = sorted({len(v) for v in values})
        if len(lengths) > 1:
            raise InputError(
                f"per-pair column {name!r} holds lists of different lengths ({', '.join(map(str, lengths))}) in one"
                " batch: every pair needs one value per attribute"
            )
        return torch.tensor([[float(x) for x in v] for v in values], dtype=torch.float64)
    if all(isinstance(v, (bool, int)) for v in values):
        return torch.tensor([int(v) for v in values], dtype=torch.long)
    return torch.tensor([float(v) for v in values], dtype=torch.float64)
