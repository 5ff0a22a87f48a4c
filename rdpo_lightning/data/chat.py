"""Turning a preference row (text or chat messages) into prompt/chosen/rejected *text* the tokenizer can take.

Chat messages are rendered with the tokenizer's chat template, the prompt with the generation prompt appended, and
each response as the remainder of the rendered prompt+response conversation (as TRL does), so the prompt/response
boundary sits exactly where generation would start. Rows without a prompt column (HH-RLHF style: whole
conversations in ``chosen`` and ``rejected``) get the shared beginning as their prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import takewhile
from typing import Any

from rdpo_lightning.data.rows import EMPTY_RESPONSE, IDENTICAL
from rdpo_lightning.errors import InputError

Messages = list[dict[str, Any]]

#: the column that says why a row could not be rendered ("" when it could), and the reasons
RENDER_PROBLEM = "render_problem"
NO_SHARED_PROMPT = "chosen and rejected do not share the prompt delimiter"
NO_SHARED_TURNS = "chosen and rejected messages do not share the turns before an assistant answer"
#: the row's index in its file (kept through shuffling and splitting), so errors name a row the user can find
SOURCE_ROW = "__source_row__"


def is_messages(value: Any) -> bool:
    """A list of ``{"role": text, "content": text}`` (other keys allowed); a null or non-text content is not."""
    return isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    )


def common_prefix_length(a: Sequence, b: Sequence) -> int:
    return sum(1 for _ in takewhile(lambda pair: pair[0] == pair[1], zip(a, b, strict=False)))


def split_text_prompt(chosen: str, rejected: str, delimiter: str | None) -> tuple[str, str, str] | None:
    """The shared prompt of two whole conversations: up to the last ``delimiter`` of ``chosen`` (e.g.
    ``"\\n\\nAssistant:"``) when given, else the longest common prefix, with a space before the first differing
    character left to the responses (TRL's rule). None when ``delimiter`` is given but the two do not share it."""
    if delimiter is not None:
        cut = chosen.rfind(delimiter)
        if cut < 0 or not rejected.startswith(chosen[: cut + len(delimiter)]):
            return None
        cut += len(delimiter)
    else:
        cut = common_prefix_length(chosen, rejected)
        if cut > 0 and chosen[cut - 1] == " ":
            cut -= 1
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _as_messages(value: Any, role: str) -> Messages:
    return value if isinstance(value, list) else [{"role": role, "content": value}]


def render_pair(
    example: dict[str, Any],
    index: int,
    split: str,
    tokenizer: Any,
    use_chat_template: bool,
    prompt_delimiter: str | None = None,
    columns: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A row with ``prompt`` (text, messages or absent/None), ``chosen`` and ``rejected`` → three strings.

    A null value stays null (the row checks count it as a skip; a null in a configured prompt column is a missing
    value, not a request to find the prompt in the responses); a row whose prompt cannot be found gets a
    ``render_problem`` (counted and skipped); a value of the wrong kind is an error naming the split, row and
    column (the file's row, :data:`SOURCE_ROW`, when the example carries it; the file's column name from
    ``columns``, role → column). With ``use_chat_template`` every part is rendered through the template (text becomes
    a user or assistant message); without it, messages are an error, since they have no text form of their own.
    """
    prompt, chosen, rejected = example.get("prompt"), example["chosen"], example["rejected"]
    where = f"{split}, row {example.get(SOURCE_ROW, index)}"
    for role, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        column = f"column {(columns or {}).get(role, role)!r} (data.{role}_column)"
        if value is not None and not isinstance(value, str) and not is_messages(value):
            raise InputError(
                f"{where}: {column} holds {type(value).__name__} ({str(value)[:60]!r}); "
                "expected text or a list of chat messages with 'role' and 'content' (text content)"
            )
        if is_messages(value) and not use_chat_template:
            raise InputError(f"{where}: {column} holds chat messages but data.apply_chat_template is false")
    if chosen is None or rejected is None or ("prompt" in example and prompt is None):
        return _row(None, None, None)  # a null in a configured column: the row checks count it
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise InputError(
            f"{where}: one of chosen/rejected (data.chosen_column / data.rejected_column) is text and the other "
            "chat messages"
        )

    if not use_chat_template:
        if prompt is None:
            parts = split_text_prompt(chosen, rejected, prompt_delimiter)
            if parts is None:
                return _row(None, None, None, NO_SHARED_PROMPT)
            prompt, chosen, rejected = parts
        return _row(prompt, chosen, rejected)

    chosen_messages, rejected_messages = _as_messages(chosen, "assistant"), _as_messages(rejected, "assistant")
    if prompt is None:
        if isinstance(chosen, str):
            parts = split_text_prompt(chosen, rejected, prompt_delimiter)
            if parts is None:
                return _row(None, None, None, NO_SHARED_PROMPT)
            prompt_messages = [{"role": "user", "content": parts[0]}]
            chosen_messages, rejected_messages = (
                _as_messages(parts[1], "assistant"),
                _as_messages(parts[2], "assistant"),
            )
        else:
            if chosen == rejected:
                return _row(None, None, None, IDENTICAL)
            shared = common_prefix_length(chosen, rejected)
            prompt_messages, chosen_messages, rejected_messages = chosen[:shared], chosen[shared:], rejected[shared:]
            if not shared or not all(m and m[0]["role"] == "assistant" for m in (chosen_messages, rejected_messages)):
                return _row(None, None, None, NO_SHARED_TURNS)
    else:
        prompt_messages = _as_messages(prompt, "user")
        # UltraFeedback style: the responses repeat the prompt's messages before the assistant's answer
        for messages in (chosen_messages, rejected_messages):
            if messages[: len(prompt_messages)] == prompt_messages:
                del messages[: len(prompt_messages)]
    if any(not "".join(m["content"] for m in r).strip() for r in (chosen_messages, rejected_messages)):
        return _row(None, None, None, EMPTY_RESPONSE)  # as an empty text response is: not the end-of-turn alone
    return {**render_messages(prompt_messages, chosen_messages, rejected_messages, tokenizer), RENDER_PROBLEM: ""}


def _row(prompt: str | None, chosen: str | None, rejected: str | None, problem: str = "") -> dict[str, Any]:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, RENDER_PROBLEM: problem}


def render_messages(prompt: Messages, chosen: Messages, rejected: Messages, tokenizer: Any) -> dict[str, str]:
    """Prompt with the generation prompt; each response as the rest of its rendered conversation."""
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = [tokenizer.apply_chat_template(prompt + response, tokenize=False) for response in (chosen, rejected)]
    # a template may render the generation prompt differently from an answered turn: keep the common part
    cut = min(common_prefix_length(prompt_text, text) for text in full)
    return {"prompt": prompt_text[:cut], "chosen": full[0][cut:], "rejected": full[1][cut:]}


def render_prompt_and_responses(prompt: Any, responses: Sequence[str], tokenizer: Any) -> tuple[str, list[str]]:
    """One prompt (text or messages) and several text responses, rendered through the chat template."""
    prompt_messages = _as_messages(prompt, "user")
    prompt_text = tokenizer.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True)
    full = [
        tokenizer.apply_chat_template(prompt_messages + [{"role": "assistant", "content": r}], tokenize=False)
        for r in responses
    ]
    cut = min([len(prompt_text), *(common_prefix_length(prompt_text, text) for text in full)])
    return prompt_text[:cut], [text[cut:] for text in full]
