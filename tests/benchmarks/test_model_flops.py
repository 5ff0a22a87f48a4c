"""benchmarks/model_flops.py against torch's own FLOP counter on real Llama forward and backward passes, and its
weight count against one worked out from the config."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks.model_flops import matmul_parameters, pairs_flops, sequence_flops


@pytest.mark.parametrize("tied", [False, True])
def test_a_training_pass_costs_what_the_formula_says(tied):
    vocab, hidden, mlp, layers, heads, kv_heads = 97, 32, 48, 2, 4, 2
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, tie_word_embeddings=tied,
                         attn_implementation="eager")  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    head_dim = hidden // heads
    per_layer = 2 * hidden * hidden + 2 * hidden * kv_heads * head_dim + 3 * hidden * mlp  # q, o; k, v; MLP
    assert matmul_parameters(model) == layers * per_layer + vocab * hidden  # the output layer, tied or not
    for length in (1, 7, 23):
        ids = torch.randint(0, vocab, (1, length))
        with FlopCounterMode(display=False) as counter:
            model(input_ids=ids, labels=ids).loss.backward()
        assert counter.get_total_flops() == sequence_flops(matmul_parameters(model), layers, hidden, length)


def test_a_pair_is_its_two_sequences():
    assert pairs_flops([(3, 5, 2), (1, 1, 4)], 10, 2, 8) == sum(
        sequence_flops(10, 2, 8, t) for t in (3 + 5, 3 + 2, 1 + 1, 1 + 4)
    )
