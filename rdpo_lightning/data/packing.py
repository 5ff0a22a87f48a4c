"""Padding-free batches: the sequences of a batch packed end to end into a few rows, with restarting ``position_ids``.

With preference data whose lengths run from a few dozen to thousands of tokens, a right-padded (2B, T_max) batch
spends most of its compute and memory on padding. Here each sequence (prompt + chosen, prompt + rejected) is placed,
longest first, into the first row with room (first-fit decreasing), rows being as long as the batch's longest
sequence. ``position_ids`` restart at 0 for every sequence and no ``attention_mask`` is passed, so transformers
(``masking_utils.find_packed_sequence_indices``, for sdpa, eager and flash attention alike) keeps each sequence from
attending to the one before it. Rows are not concatenated into *one* row for a masked kernel: sdpa and eager
attention cost grows with the square of the row length, and on this CPU one 8,192-token block-diagonal row took 13×
the time of sixteen 512-token rows (measured with ``F.scaled_dot_product_attention``); rows capped at the longest
sequence keep the attention cost of the padded batch's longest row while dropping nearly all its padding. A
variable-length kernel needs no mask and costs what the sequences cost: for it the rows are read end to end as one
row, whose segment boundaries (every sequence, and each row's trailing padding) the batch carries as plain integers
(``cu_seq_lens``, ``max_seq_len``; see :mod:`rdpo_lightning.models.varlen_attention`), so no one reads them back from
the device.

``pack_index`` (2B, T) maps every position of the pair layout (row i: the i-th sequence, as :class:`PairCollator`
lays it out) to its flat position in the packed (R, L) grid, −1 where the pair layout pads; :func:`unpack` and
:func:`pack` move tensors between the two layouts differentiably, so log-probs and input embeddings reach the loss
and the robust strategies in the pair layout they expect.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor

# moved to the batch layout (the models read them too); importable from here as before
from rdpo_lightning.batch_layout import (  # noqa: F401
    CU_SEQ_LENS,
    IGNORE_INDEX,
    MAX_SEQ_LEN,
    PACK_INDEX,
    pack,
    unpack,
    unpack_token_logps,
)


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Sequence indices grouped into bins of total length <= ``capacity`` (each length <= capacity), longest first;
    deterministic (ties keep index order)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for b, free in enumerate(room):
            if lengths[index] <= free:
                bins[b].append(index)
                room[b] -= lengths[index]
                break
        else:
            bins.append([index])
            room.append(capacity - lengths[index])
    return bins


def pack_sequences(
    rows: Sequence[Sequence[int]], prompt_lengths: Sequence[int], pad_token_id: int, multiple_of: int | None = None
) -> dict[str, Tensor]:
    """``input_ids``, ``position_ids``, ``labels`` (R, L) and ``pack_index`` (N, T) for N token sequences whose first
    ``prompt_lengths`` tokens are not scored, and the segment boundaries of the rows laid end to end
    (:data:`CU_SEQ_LENS`, :data:`MAX_SEQ_LEN`: plain ints). L is the longest sequence, rounded up to ``multiple_of``."""
    lengths = [len(row) for row in rows]
    longest = max(lengths)
    width = -(-longest // multiple_of) * multiple_of if multiple_of else longest
    bins = first_fit_decreasing(lengths, width)
    input_ids = torch.full((len(bins), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(bins), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(bins), width), dtype=torch.long)
    pack_index = torch.full((len(rows), longest), -1, dtype=torch.long)
    segments: list[int] = []
    for r, members in enumerate(bins):
        offset = 0
        for s in members:
            n, ids = lengths[s], torch.tensor(rows[s], dtype=torch.long)
            input_ids[r, offset : offset + n] = ids
            # the first token is never a target (in the padded layout either): it must not score the previous sequence
            start = max(prompt_lengths[s], 1)
            labels[r, offset + start : offset + n] = ids[start:]
            position_ids[r, offset : offset + n] = torch.arange(n)
            pack_index[s, :n] = r * width + offset + torch.arange(n)
            segments.append(n)
            offset += n
        position_ids[r, offset:] = torch.arange(width - offset)  # trailing padding: a sequence of its own
        if offset < width:
            segments.append(width - offset)
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "labels": labels,
        PACK_INDEX: pack_index,
        CU_SEQ_LENS: [0, *itertools.accumulate(segments)],
        MAX_SEQ_LEN: max(segments),
    }
