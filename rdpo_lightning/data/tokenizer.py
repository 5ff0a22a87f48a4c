"""A real Hugging Face tokenizer for a closed vocabulary, saved and re-loaded through ``AutoTokenizer``.

The embedded world needs no download, but it should exercise the same code path a user's tokenizer takes, so the
word-level tokenizer is written with ``save_pretrained`` and read back with ``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from rdpo_lightning.checks import looks_local
from rdpo_lightning.errors import InputError

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


def load_tokenizer(name_or_path: str | Path, key: str = "data.tokenizer"):
    """Load any tokenizer the way users do, and make sure it can pad (GPT-2 style tokenizers ship without a pad).
    ``key``: the YAML key naming it, for a one-line error when it cannot be loaded."""

    name = str(name_or_path)
    if looks_local(name) and not Path(name).expanduser().exists():
        raise InputError(f"{key}={name}: no such directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(Path(name).expanduser()) if looks_local(name) else name)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0]
        raise InputError(f"{key}={name}: cannot load a tokenizer from it ({first})") from error
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise InputError(f"{key}={name}: the tokenizer has neither a pad nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


__all__ = ["save_word_tokenizer", "load_tokenizer", "PreTrainedTokenizerFast"]
