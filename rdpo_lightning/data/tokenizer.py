"""A real Hugging Face tokenizer for a closed vocabulary, saved and re-loaded through ``AutoTokenizer``.

The embedded world needs no download, but it should exercise the same code path a user's tokenizer takes, so the
word-level tokenizer is written with ``save_pretrained`` and read back with ``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"


def save_word_tokenizer(words: Sequence[str], directory: str | Path) -> Path:
    """Write a whitespace word-level tokenizer over ``words`` (plus pad/bos/eos/unk) to ``directory``."""
    vocab = {token: i for i, token in enumerate([PAD, BOS, EOS, UNK, *dict.fromkeys(words)])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK, padding_side="right"
    )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(directory)
    return directory


def load_tokenizer(name_or_path: str | Path):
    """Load any tokenizer the way users do, and make sure it can pad (GPT-2 style tokenizers ship without a pad)."""
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer {name_or_path} has neither a pad nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


__all__ = ["save_word_tokenizer", "load_tokenizer", "PreTrainedTokenizerFast"]
