"""Tokenising preference pairs, with a stated truncation policy.

Prompt and responses are tokenised separately (as TRL does) and concatenated, so the prompt/response boundary is
exact. Truncation keeps the *end* of the prompt (at most ``max_prompt_length`` tokens) and the *start* of each
response (to ``max_length`` in total); a pair whose prompt leaves no room for a response token is marked unfit, and
the caller drops and counts it.
"""

from __future__ import annotations

from typing import Any

FIT_COLUMN = "fits"
TOKEN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


def tokenize_pair(
    example: dict[str, Any], tokenizer: Any, max_length: int, max_prompt_length: int | None = None
) -> dict[str, Any]:
    """One pair of strings → ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` and whether it ``fits``."""
    prompt_ids = tokenizer(example["prompt"], add_special_tokens=True)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    chosen_ids = tokenizer(example["chosen"], add_special_tokens=False)["input_ids"] + eos
    rejected_ids = tokenizer(example["rejected"], add_special_tokens=False)["input_ids"] + eos
    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[len(prompt_ids) - max_prompt_length :]
    room = max_length - len(prompt_ids)
    fits = room >= 1
    room = max(room, 0)
    return {
        "prompt_ids": prompt_ids,
        "chosen_ids": chosen_ids[:room],
        "rejected_ids": rejected_ids[:room],
        FIT_COLUMN: fits,
    }


def check_lengths(max_length: int, max_prompt_length: int | None) -> None:
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    if max_prompt_length is not None and not 1 <= max_prompt_length < max_length:
        raise ValueError(f"max_prompt_length must lie in [1, max_length), got {max_prompt_length}")
