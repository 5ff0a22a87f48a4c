"""Sequence log-probabilities of responses, without a full-vocabulary float32 log-softmax copy of the batch.

A naive ``logits.float().log_softmax(-1).gather(...)`` keeps a (rows, T, V) float32 tensor alive for backward. Here
the target logit is picked and a logsumexp subtracted, chunk by chunk over rows. When the logits are half precision
(``bf16-mixed`` / ``16-mixed``), each chunk's float32 up-cast is *recomputed* in backward (non-reentrant activation
checkpointing of the chunk), so only the half-precision logits stay saved: peak extra memory is one chunk's float32
up-cast, never the whole batch's. Float32 / float64 logits need no up-cast and are used as they are.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from rdpo_lightning.batch_layout import IGNORE_INDEX

#: default rows per chunk: at 2 × 4 pairs of 1024 tokens and a 128k vocabulary the float32 chunk is 4 GiB
DEFAULT_CHUNK_ROWS = 8


def _chunk_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """log p(target) for one chunk, computed in at least float32."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def token_logprobs(
    logits: Tensor, labels: Tensor, chunk_rows: int | None = DEFAULT_CHUNK_ROWS
) -> tuple[Tensor, Tensor]:
    """Per-token log p(label) for next-token prediction, and the mask of positions that count.

    ``logits`` is (rows, T, V) for inputs whose next-token targets are ``labels`` (rows, T) shifted by one;
    positions labelled ``IGNORE_INDEX`` (prompt, padding) are masked. Returns ``(logps, mask)``, both (rows, T-1),
    in float32 (float64 for float64 logits). ``chunk_rows``: rows per chunk (None or <= 0: all rows at once).
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on (rows, T)")
    logits = logits[:, :-1]
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    safe_targets = targets.masked_fill(~mask, 0)
    rows = logits.shape[0]
    step = rows if not chunk_rows or chunk_rows <= 0 else chunk_rows
    upcasts = logits.dtype in (torch.float16, torch.bfloat16)
    recompute = upcasts and torch.is_grad_enabled() and logits.requires_grad
    pieces = []
    for start in range(0, rows, step):
        chunk, chunk_targets = logits[start : start + step], safe_targets[start : start + step]
        if recompute:
            pieces.append(checkpoint(_chunk_logps, chunk, chunk_targets, use_reentrant=False))
        else:
            pieces.append(_chunk_logps(chunk, chunk_targets))
    logps = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
    return logps * mask, mask


def sequence_logprobs(
    logits: Tensor, labels: Tensor, average: bool = False, chunk_rows: int | None = DEFAULT_CHUNK_ROWS
) -> Tensor:
    """Sum (or, with ``average``, mean) of response-token log-probs per row: shape (rows,)."""
    return sequence_sums(*token_logprobs(logits, labels, chunk_rows), average=average)


def sequence_sums(logps: Tensor, mask: Tensor, average: bool = False) -> Tensor:
    """Per-row sum (or, with ``average``, mean over the counted positions) of masked per-token log-probs."""
    total = logps.sum(-1)
    if average:
        return total / mask.sum(-1).clamp(min=1)
    return total
