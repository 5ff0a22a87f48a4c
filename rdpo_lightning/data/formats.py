"""Which public pairwise layout a table is in, so the common ones load without per-format settings.

TRL's preference formats and Anthropic's HH-RLHF differ in where the prompt lives:

* **explicit prompt**: a prompt column beside ``chosen`` and ``rejected``, each text or chat messages
  (``HuggingFaceH4/ultrafeedback_binarized``: a text prompt, responses as message lists that repeat it);
* **implicit prompt, conversational**: no prompt column; ``chosen`` and ``rejected`` are message lists sharing the
  user turns (``trl-lib/ultrafeedback_binarized``): the shared message prefix is the prompt;
* **HH-RLHF text**: no prompt column; whole ``\\n\\nHuman: ... \\n\\nAssistant: ...`` transcripts: the prompt is
  everything up to and including the last ``\\n\\nAssistant:``. A shared *character* prefix would swallow the words
  both answers happen to start with ("I think ...") into the prompt, so the delimiter is used whenever the rows are
  HH transcripts;
* **implicit prompt, text** (no prompt column, other text): the shared character prefix, TRL's rule, only when the
  user asks for it with ``prompt_column: null``.

A configured prompt column the data lacks is taken for an implicit prompt only when the layout is unmistakable
(message lists, or HH transcripts); anything else stays the missing-column error, with a hint at the keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets

from rdpo_lightning.data.chat import is_messages
from rdpo_lightning.errors import InputError

HH_HUMAN = "\n\nHuman:"
HH_ASSISTANT = "\n\nAssistant:"
#: rows looked at to tell a layout (the first non-null values of ``chosen``)
SAMPLE_ROWS = 64


@dataclass(frozen=True)
class PairLayout:
    """Where prompt and responses come from: column names as the file has them (``prompt_column`` None: the prompt
    is the shared beginning of the responses, cut after ``prompt_delimiter`` when it is set)."""

    kind: str
    prompt_column: str | None
    chosen_column: str
    rejected_column: str
    prompt_delimiter: str | None

    @property
    def columns(self) -> dict[str, str]:
        """Role → the file's column, for the roles the file has."""
        roles = {"prompt": self.prompt_column, "chosen": self.chosen_column, "rejected": self.rejected_column}
        return {role: column for role, column in roles.items() if column is not None}

    def describe(self) -> str:
        """One line: which columns became the prompt and the responses."""
        responses = f"responses {self.chosen_column!r} / {self.rejected_column!r}"
        if self.prompt_column is not None:
            return f"{self.kind}: prompt {self.prompt_column!r}, {responses}"
        if self.kind.startswith("implicit prompt, conversational"):
            shared = f"the messages {self.chosen_column!r} and {self.rejected_column!r} share"
            return f"{self.kind}: prompt = {shared}, {responses} after them"
        if self.prompt_delimiter is not None:
            return (
                f"{self.kind}: prompt = {self.chosen_column!r} up to and including its last "
                f"{self.prompt_delimiter!r}, {responses} after it"
            )
        shared = f"the characters {self.chosen_column!r} and {self.rejected_column!r} share (TRL's rule)"
        return f"{self.kind}: prompt = {shared}, {responses} after it"


def _sample(dataset: datasets.Dataset, column: str) -> list:
    values = dataset.select(range(min(len(dataset), 4 * SAMPLE_ROWS)))[column]
    return [v for v in values if v is not None][:SAMPLE_ROWS]


def is_hh_transcript(value: object) -> bool:
    return isinstance(value, str) and HH_HUMAN in value and HH_ASSISTANT in value


def detect_pair_layout(
    dataset: datasets.Dataset,
    prompt_column: str | None,
    chosen_column: str,
    rejected_column: str,
    prompt_delimiter: str | None,
    where: str,
) -> PairLayout:
    """The layout of ``dataset`` given the configured columns (module docstring). Raises naming the keys when a
    configured prompt column is missing and no implicit layout is obvious; missing response columns are left to the
    caller's column check."""
    columns = dataset.column_names
    if chosen_column not in columns or rejected_column not in columns:
        return PairLayout("explicit prompt", prompt_column, chosen_column, rejected_column, prompt_delimiter)
    sample = _sample(dataset, chosen_column)
    messages = bool(sample) and all(is_messages(v) for v in sample)
    transcripts = bool(sample) and all(is_hh_transcript(v) for v in sample)
    if prompt_column is not None and prompt_column in columns:
        form = "conversational" if messages or any(is_messages(v) for v in _sample(dataset, prompt_column)) else "text"
        return PairLayout(f"explicit prompt, {form}", prompt_column, chosen_column, rejected_column, prompt_delimiter)
    if messages:
        return PairLayout("implicit prompt, conversational", None, chosen_column, rejected_column, None)
    if transcripts:
        delimiter = prompt_delimiter or HH_ASSISTANT
        return PairLayout("implicit prompt, HH-RLHF text", None, chosen_column, rejected_column, delimiter)
    if prompt_column is None:
        return PairLayout("implicit prompt, text", None, chosen_column, rejected_column, prompt_delimiter)
    raise InputError(
        f"{where}: missing column(s) [{prompt_column!r}] (set by data.prompt_column); the data has columns {columns}. "
        f"If {chosen_column!r} and {rejected_column!r} hold whole conversations that share the prompt, set "
        "data.prompt_column: null (and data.prompt_delimiter to the text that ends the prompt, e.g. "
        "'\\n\\nAssistant:'); otherwise name the prompt column with data.prompt_column"
    )
