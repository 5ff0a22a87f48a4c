"""Tokenising preference pairs, with a stated truncation policy and a reason for every pair that is dropped.

Prompt and responses are tokenised separately (as TRL does) and concatenated, so the prompt/response boundary is
exact. The policy:

* the prompt keeps its *end* (``truncation_mode="keep_end"``, the default: the question is usually last) or its
  *start* (``"keep_start"``), to at most ``max_prompt_length`` tokens;
* each response keeps its *start*, to ``max_length`` tokens in total with the prompt;
* an empty prompt (``""``, whitespace) becomes the BOS token (EOS where there is none): a response token is scored
  from the token before it, so without one the response's first token would silently not count;
* a pair is dropped (and the caller counts it under :data:`DROP_COLUMN`) when the prompt leaves no room for a
  response token, when ``drop_truncated`` is set and a response had to be cut, when a response has no token to
  score, or when truncation made the chosen and rejected responses identical (no preference left to learn).

Chat-templated text (``templated=True``) already carries its special tokens: no BOS is added to the prompt and no EOS
to the responses (the template closes the assistant turn). Plain text gets the tokenizer's special tokens on the
prompt and an EOS after each response.
"""

from __future__ import annotations

from typing import Any

from rdpo_lightning.checks import check_choice, check_int_at_least

DROP_COLUMN = "drop_reason"
#: what was cut from a kept pair: "" (nothing), or "prompt" and/or "response", comma-separated (text: a numeric
#: column would reach the robust strategy as a per-pair column)
TRUNCATION_COLUMN = "truncated"
PROMPT_CUT, RESPONSE_CUT = "prompt", "response"
TOKEN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
TRUNCATION_MODES = ("keep_end", "keep_start")

#: drop reasons, as counted and logged
NO_ROOM = "prompt leaves no room for a response within max_length"
TRUNCATED = "response longer than max_length allows (drop_truncated)"
IDENTICAL_AFTER_TRUNCATION = "chosen and rejected identical after tokenisation and truncation"
NOTHING_TO_SCORE = "a response with no token to score (empty after tokenisation, or no token before it)"


def tokenize_pair(
    example: dict[str, Any],
    tokenizer: Any,
    max_length: int,
    max_prompt_length: int | None = None,
    truncation_mode: str = "keep_end",
    drop_truncated: bool = False,
    templated: bool = False,
) -> dict[str, Any]:
    """One pair of strings → ``prompt_ids``, ``chosen_ids``, ``rejected_ids``, its ``drop_reason`` ("" = kept) and
    what truncation cut from a kept pair (:data:`TRUNCATION_COLUMN`)."""
    prompt_ids, prompt_cut = tokenize_prompt(
        example["prompt"], tokenizer, max_prompt_length, truncation_mode, templated
    )
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None and not templated else []
    chosen_ids = tokenizer(example["chosen"], add_special_tokens=False)["input_ids"] + eos
    rejected_ids = tokenizer(example["rejected"], add_special_tokens=False)["input_ids"] + eos
    chosen_ids, rejected_ids, reason, response_cut = fit_responses(
        prompt_ids, chosen_ids, rejected_ids, max_length, drop_truncated
    )
    cut = [PROMPT_CUT] * prompt_cut + [RESPONSE_CUT] * response_cut
    return {
        "prompt_ids": prompt_ids,
        "chosen_ids": chosen_ids,
        "rejected_ids": rejected_ids,
        DROP_COLUMN: reason,
        TRUNCATION_COLUMN: ",".join(cut) if not reason else "",
    }


def tokenize_prompt(
    prompt: str, tokenizer: Any, max_prompt_length: int | None, truncation_mode: str, templated: bool
) -> tuple[list[int], bool]:
    """A prompt's ids (BOS added to untemplated text), cut to ``max_prompt_length`` by ``truncation_mode``, and
    whether it was cut. An empty prompt becomes BOS (EOS where there is none), so a response's first token is scored
    from the token before it."""
    prompt_ids = list(tokenizer(prompt, add_special_tokens=not templated)["input_ids"])
    cut = max_prompt_length is not None and len(prompt_ids) > max_prompt_length
    if cut:
        if truncation_mode == "keep_end":
            prompt_ids = prompt_ids[len(prompt_ids) - max_prompt_length :]
        else:
            prompt_ids = prompt_ids[:max_prompt_length]
    if not prompt_ids:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        prompt_ids = [start] if start is not None else []
    return prompt_ids, cut


def fit_responses(
    prompt_ids: list[int], chosen_ids: list[int], rejected_ids: list[int], max_length: int, drop_truncated: bool
) -> tuple[list[int], list[int], str, bool]:
    """Both responses cut to ``max_length`` with the prompt (each keeps its start): (chosen, rejected, the pair's drop
    reason or "", whether a response was cut)."""
    room = max(max_length - len(prompt_ids), 0)
    cut = max(len(chosen_ids), len(rejected_ids)) > room
    reason = ""
    if room < 1:
        reason = NO_ROOM
    elif drop_truncated and cut:
        reason = TRUNCATED
    chosen_ids, rejected_ids = list(chosen_ids[:room]), list(rejected_ids[:room])
    if not reason and not (prompt_ids and chosen_ids and rejected_ids):
        reason = NOTHING_TO_SCORE
    if not reason and chosen_ids == rejected_ids:
        reason = IDENTICAL_AFTER_TRUNCATION
    return chosen_ids, rejected_ids, reason, cut


def check_lengths(max_length: int, max_prompt_length: int | None, truncation_mode: str = "keep_end") -> None:
    check_int_at_least("data.max_length", max_length, 2)
    if max_prompt_length is not None and not 1 <= max_prompt_length < max_length:
        raise ValueError(f"data.max_prompt_length must lie in [1, max_length), got {max_prompt_length}")
    check_choice("data.truncation_mode", truncation_mode, TRUNCATION_MODES)


def truncation_text(cuts: dict[str, int], kept: int, settings: dict[str, Any]) -> str:
    """One line on what truncation cut from a split's ``kept`` pairs (``cuts``: ``{"prompt": n, "response": n}``)."""
    parts = []
    if cuts.get(RESPONSE_CUT):
        parts.append(
            f"{cuts[RESPONSE_CUT]} of {kept} pairs had a response cut to fit max_length={settings['max_length']}"
        )
    if cuts.get(PROMPT_CUT):
        kept_part = "end" if settings["truncation_mode"] == "keep_end" else "start"
        parts.append(
            f"{cuts[PROMPT_CUT]} of {kept} a prompt cut to max_prompt_length={settings['max_prompt_length']} (its "
            f"{kept_part} kept: truncation_mode={settings['truncation_mode']})"
        )
    return "; ".join(parts)
