"""The log-prob path keeps no full-vocabulary float32 copy of half-precision logits for backward."""

from __future__ import annotations

import pytest
import torch

from rdpo_lightning.batch_layout import IGNORE_INDEX
from rdpo_lightning.models.logprobs import sequence_logprobs

ROWS, LENGTH, VOCAB = 8, 6, 50


def half_batch(dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(ROWS, LENGTH, VOCAB, generator=g) * 3).to(dtype)
    labels = torch.randint(0, VOCAB, (ROWS, LENGTH), generator=g)
    labels[:, :2] = IGNORE_INDEX
    return logits, labels


def saved_float32_numels(fn) -> list[int]:
    """Sizes of every float32 tensor autograd saves for backward while ``fn`` runs."""
    sizes: list[int] = []

    def pack(tensor):
        if tensor.dtype == torch.float32:
            sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sizes


def test_no_full_vocabulary_float32_tensor_is_saved_for_backward():
    logits, labels = half_batch()
    logits.requires_grad_()
    one_chunk = 2 * (LENGTH - 1) * VOCAB
    saved = saved_float32_numels(lambda: sequence_logprobs(logits, labels, chunk_rows=2))
    assert all(n < one_chunk for n in saved), saved

    # the naive path (what the chunks avoid) does save the whole batch's float32 up-cast: the check can fail
    def naive():
        up = logits[:, :-1].float()
        return up.gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)) - torch.logsumexp(up, -1, keepdim=True)

    assert max(saved_float32_numels(naive)) >= ROWS * (LENGTH - 1) * VOCAB


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_checkpointed_chunks_match_a_float64_log_softmax(dtype):
    logits, labels = half_batch(dtype)
    a = logits.clone().requires_grad_()
    got = sequence_logprobs(a, labels, chunk_rows=3)
    got.sum().backward()

    b = logits.double().requires_grad_()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    picked = b[:, :-1].log_softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    want = (picked * mask).sum(-1)
    want.sum().backward()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-4)
    torch.testing.assert_close(a.grad.double(), b.grad, rtol=0, atol=1e-2)  # half-precision gradient storage


def test_float64_logits_stay_float64():
    logits, labels = half_batch(torch.float64)
    assert sequence_logprobs(logits, labels).dtype == torch.float64
