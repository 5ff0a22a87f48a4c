"""Sequence log-probabilities of responses, without a full-vocabulary float32 log-softmax copy.

A naive ``logits.log_softmax(-1).gather(...)`` keeps a (rows, T, V) float32 tensor alive for backward. Selecting the
target logit and subtracting a logsumexp needs only (rows, T) extra memory per chunk, and chunking over rows bounds
the float32 up-cast of half-precision logits to ``chunk_rows`` rows at a time.
"""

from __future__ import annotations

import torch
from torch import Tensor

IGNORE_INDEX = -100


def token_logprobs(logits: Tensor, labels: Tensor, chunk_rows: int | None = None) -> tuple[Tensor, Tensor]:
    """Per-token log p(label) for next-token prediction, and the mask of positions that count.

    ``logits`` is (rows, T, V) for inputs whose next-token targets are ``labels`` (rows, T) shifted by one;
    positions labelled ``IGNORE_INDEX`` (prompt, padding) are masked. Returns ``(logps, mask)``, both (rows, T-1).
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on (rows, T)")
    logits = logits[:, :-1]
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    safe_targets = targets.masked_fill(~mask, 0)
    rows = logits.shape[0]
    step = rows if not chunk_rows or chunk_rows <= 0 else chunk_rows
    pieces = []
    for start in range(0, rows, step):
        chunk = logits[start : start + step]
        if chunk.dtype in (torch.float16, torch.bfloat16):
            chunk = chunk.float()
        picked = chunk.gather(-1, safe_targets[start : start + step].unsqueeze(-1)).squeeze(-1)
        pieces.append(picked - torch.logsumexp(chunk, dim=-1))
    logps = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
    return logps * mask, mask


def sequence_logprobs(logits: Tensor, labels: Tensor, average: bool = False, chunk_rows: int | None = None) -> Tensor:
    """Sum (or, with ``average``, mean) of response-token log-probs per row: shape (rows,)."""
    logps, mask = token_logprobs(logits, labels, chunk_rows)
    total = logps.sum(-1)
    if average:
        return total / mask.sum(-1).clamp(min=1)
    return total
