"""Padding-free batches give the log-probs and gradients of padded ones (GPT-2 and Llama, sdpa and eager)."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from rdpo_lightning.batch_layout import CU_SEQ_LENS, IGNORE_INDEX, MAX_SEQ_LEN, pack, unpack
from rdpo_lightning.data.collate import PairCollator
from rdpo_lightning.data.packing import first_fit_decreasing
from rdpo_lightning.models.scoring import token_logps

VOCAB = 61


def model(kind: str, attention: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "gpt2":
        config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64)
        config._attn_implementation = attention
        return GPT2LMHeadModel(config).double().eval()
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,
    )  # fmt: skip
    config._attn_implementation = attention
    return LlamaForCausalLM(config).double().eval()


def pairs() -> list[dict]:
    """Pairs of very different lengths (the long-tailed case packing is for)."""
    g = torch.Generator().manual_seed(3)

    def ids(n: int) -> list[int]:
        return torch.randint(1, VOCAB, (n,), generator=g).tolist()

    shapes = [(3, 20, 2), (1, 4, 9), (5, 2, 3), (2, 30, 30), (4, 1, 6)]
    return [{"prompt_ids": ids(p), "chosen_ids": ids(c), "rejected_ids": ids(r)} for p, c, r in shapes]


def test_first_fit_decreasing_fills_rows_longest_first():
    assert first_fit_decreasing([5, 3, 8, 2, 4], 8) == [[2], [0, 1], [4, 3]]
    assert first_fit_decreasing([1, 1, 1], 8) == [[0, 1, 2]]


def test_a_packed_batch_has_fewer_rows_and_no_padding_inside():
    padded = PairCollator(0)(pairs())
    packed = PairCollator(0, padding_free=True)(pairs())
    assert packed["input_ids"].shape[1] == padded["input_ids"].shape[1]
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]
    assert "attention_mask" not in packed
    assert (packed["labels"] != IGNORE_INDEX).sum() == (padded["labels"] != IGNORE_INDEX).sum()
    # every real token of the pair layout sits at its pack_index, with its position
    valid = packed["pack_index"] >= 0
    flat = packed["input_ids"].flatten()[packed["pack_index"][valid]]
    assert torch.equal(flat, padded["input_ids"][:, : valid.shape[1]][valid])
    positions = packed["position_ids"].flatten()[packed["pack_index"][valid]]
    assert torch.equal(positions, valid.long().cumsum(1)[valid] - 1)


def test_the_collator_gives_the_boundaries_of_the_rows_end_to_end():
    batch = PairCollator(0, padding_free=True)(pairs())
    flat_positions = batch["position_ids"].flatten()
    starts = (flat_positions == 0).nonzero()[:, 0].tolist()  # each sequence and each row's padding restarts at 0
    assert batch[CU_SEQ_LENS] == [*starts, flat_positions.numel()]
    assert all(isinstance(b, int) for b in batch[CU_SEQ_LENS])
    assert batch[MAX_SEQ_LEN] == max(b - a for a, b in zip(starts, batch[CU_SEQ_LENS][1:], strict=False))


def test_pack_and_unpack_are_inverse_on_real_positions():
    packed = PairCollator(0, padding_free=True)(pairs())
    index = packed["pack_index"]
    x = torch.randn(*packed["input_ids"].shape, 3, dtype=torch.float64)
    again = pack(unpack(x, index), index, x)
    torch.testing.assert_close(again, x)
    assert (unpack(x, index)[index < 0] == 0).all()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("fused", [True, False])
def test_packed_log_probs_and_gradients_equal_the_padded_ones(kind, attention, fused):
    lm = model(kind, attention)
    results = []
    for padding_free in (False, True):
        lm.zero_grad()
        batch = PairCollator(0, padding_free=padding_free)(pairs())
        logps, mask = token_logps(lm, batch, fused=fused)
        (logps.sum(-1) ** 2).sum().backward()  # a nonlinear function of the per-sequence sums
        results.append((logps.detach(), mask, {n: p.grad.clone() for n, p in lm.named_parameters()}))
    (a, mask_a, grads_a), (b, mask_b, grads_b) = results
    assert torch.equal(mask_a, mask_b) and mask_a.sum() > 50
    torch.testing.assert_close(b, a, rtol=0, atol=1e-10)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=0, atol=1e-10, msg=name)


class IgnoresPositions(LlamaForCausalLM):
    """A model that builds its own positions and causal mask: packed sequences would see each other."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, use_cache=None, logits_to_keep=0):
        return super().forward(input_ids=input_ids, use_cache=use_cache, logits_to_keep=logits_to_keep)


def test_a_model_that_cannot_pack_is_refused_with_the_yaml_key():
    lm = IgnoresPositions(model("llama", "sdpa").config).double().eval()
    with pytest.raises(ValueError, match="data.padding_free"):
        token_logps(lm, PairCollator(0, padding_free=True)(pairs()))
