"""The tokenisation rules a fuzzer cannot see from the outside: an empty prompt still scores the response's first
token, and a response without a token to score is a counted drop, not a zero in the loss."""

from __future__ import annotations

from rdpo_lightning.data.tokenize import NOTHING_TO_SCORE, tokenize_pair
from rdpo_lightning.data.tokenizer import load_tokenizer


def test_an_empty_prompt_starts_from_bos(world_tokenizer_dir):
    tokenizer = load_tokenizer(world_tokenizer_dir)
    assert tokenizer("", add_special_tokens=True)["input_ids"] == []  # this tokenizer adds no BOS of its own
    for prompt in ("", "  \t\n"):
        pair = tokenize_pair({"prompt": prompt, "chosen": "happy", "rejected": "gloomy"}, tokenizer, max_length=8)
        assert pair["prompt_ids"] == [tokenizer.bos_token_id] and not pair["drop_reason"]
        assert pair["chosen_ids"] == [tokenizer.convert_tokens_to_ids("happy"), tokenizer.eos_token_id]


def test_a_response_without_tokens_is_dropped(world_tokenizer_dir):
    tokenizer = load_tokenizer(world_tokenizer_dir)
    # chat-templated text gets no EOS: an empty rendered response has no token at all
    pair = tokenize_pair({"prompt": "the day", "chosen": "", "rejected": "gloomy"}, tokenizer, 8, templated=True)
    assert pair["chosen_ids"] == [] and pair["drop_reason"] == NOTHING_TO_SCORE
