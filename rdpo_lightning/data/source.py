"""The arguments every DataModule that reads a data set (a Hub name, a local directory, a file) shares, declared once.

A cooperative base, listed first among a DataModule's bases: it takes its own arguments and hands the rest on
(``**kwargs``) along the MRO, which jsonargparse follows, so ``--help`` and YAML still show every argument under
``data.`` while each DataModule declares only what is its own.
"""

from __future__ import annotations

from typing import Any

from rdpo_lightning.data.tokenizer import load_tokenizer


class DatasetSource:
    """Where the rows come from, how they are tokenised, and the seed of what is drawn from them.

    Args:
        path, name, revision: what ``datasets.load_dataset`` loads: a Hub data set (``name`` is its config,
            ``revision`` its commit or tag), a local directory (``save_to_disk`` or data files), or a
            .json/.jsonl/.parquet/.csv file.
        tokenizer: tokenizer name or path (usually the policy's).
        train_split: the training split (``train_prefs`` for UltraFeedback binarized).
        val_split: the source's held-out split for in-distribution validation (null: carve it from the training
            rows, or none; each DataModule says how).
        apply_chat_template: render through the tokenizer's chat template; null (default): when the data holds chat
            messages.
        seed: what is drawn from the rows (the held-out part, random pairings) is drawn with it.
        max_length: prompt + response tokens per sequence (here 1,024 by default: real data runs longer than the
            built-in world's).
    """

    def __init__(
        self,
        *,
        path: str,
        tokenizer: str,
        name: str | None = None,
        revision: str | None = None,
        train_split: str = "train",
        val_split: str | None = None,
        apply_chat_template: bool | None = None,
        seed: int = 0,
        max_length: int = 1024,
        **kwargs: Any,
    ) -> None:
        super().__init__(max_length=max_length, **kwargs)
        self.path, self.name, self.revision = path, name, revision
        self.tokenizer_name = tokenizer
        self.train_split, self.val_split = train_split, val_split
        self.apply_chat_template = apply_chat_template
        self.seed = seed

    def build_tokenizer(self):
        return load_tokenizer(self.tokenizer_name)
