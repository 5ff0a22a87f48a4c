"""Sequence log-probs against a brute-force per-token loop."""

from __future__ import annotations

import math

import pytest
import torch

from rdpo_lightning.batch_layout import IGNORE_INDEX
from rdpo_lightning.models.logprobs import sequence_logprobs, token_logprobs


def brute_force(logits: torch.Tensor, labels: torch.Tensor, average: bool) -> list[float]:
    """log p(label_t | prefix) from logits at t−1, summed over unmasked positions, one scalar at a time."""
    out = []
    for r in range(logits.shape[0]):
        total, count = 0.0, 0
        for t in range(1, logits.shape[1]):
            target = int(labels[r, t])
            if target == IGNORE_INDEX:
                continue
            row = [float(x) for x in logits[r, t - 1]]
            norm = math.log(sum(math.exp(x) for x in row))
            total += row[target] - norm
            count += 1
        out.append(total / max(count, 1) if average else total)
    return out


@pytest.fixture()
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    rows, length, vocab = 5, 7, 11
    logits = torch.randn(rows, length, vocab, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, vocab, (rows, length), generator=g)
    prompt_lengths = [1, 2, 3, 1, 4]
    ends = [7, 5, 6, 2, 7]
    for r in range(rows):
        labels[r, : prompt_lengths[r]] = IGNORE_INDEX
        labels[r, ends[r] :] = IGNORE_INDEX
    return logits, labels


@pytest.mark.parametrize("average", [False, True])
@pytest.mark.parametrize("chunk_rows", [None, 1, 2, 100])
def test_matches_brute_force(batch, average, chunk_rows):
    logits, labels = batch
    got = sequence_logprobs(logits, labels, average=average, chunk_rows=chunk_rows)
    assert got.tolist() == pytest.approx(brute_force(logits, labels, average), rel=1e-10, abs=1e-10)


def test_gradient_matches_log_softmax_gather(batch):
    logits, labels = batch
    a = logits.clone().requires_grad_()
    sequence_logprobs(a, labels, chunk_rows=2).sum().backward()
    b = logits.clone().requires_grad_()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    naive = b[:, :-1].log_softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    (naive * mask).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_mask_excludes_prompt_and_padding(batch):
    logits, labels = batch
    logps, mask = token_logprobs(logits, labels)
    assert mask.sum().item() == (labels[:, 1:] != IGNORE_INDEX).sum().item()
    assert (logps[~mask] == 0).all()


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="disagree"):
        token_logprobs(torch.zeros(2, 5, 3), torch.zeros(2, 4, dtype=torch.long))
