"""Every DataModule hands its batching and truncation arguments to the base class by name, values intact."""

from __future__ import annotations

import inspect

import pytest

from rdpo_lightning.data import AttributeWorldDataModule, PairwisePreferenceDataModule, ScoredCompletionsDataModule
from rdpo_lightning.data.datamodule import PreferenceDataModule

#: a non-default value for every batching argument
SETTINGS = {
    "batch_size": 3,
    "val_batch_size": 5,
    "max_length": 77,
    "max_prompt_length": 31,
    "num_workers": 1,
    "pad_to_multiple_of": 4,
    "truncation_mode": "keep_start",
    "drop_truncated": True,
    "num_proc": 2,
}
REQUIRED = {
    AttributeWorldDataModule: {},
    PairwisePreferenceDataModule: {"path": "pairs.jsonl", "tokenizer": "tok"},
    ScoredCompletionsDataModule: {
        "path": "scored.jsonl",
        "tokenizer": "tok",
        "score_columns": ["a", "b"],
        "attribute_a": "a",
        "attribute_b": "b",
    },
}


@pytest.mark.parametrize("cls", list(REQUIRED), ids=lambda c: c.__name__)
def test_batching_arguments_reach_the_base_class(cls, tmp_path) -> None:
    accepted = set(inspect.signature(cls.__init__).parameters)
    settings = {k: v for k, v in SETTINGS.items() if k in accepted}
    module = cls(**REQUIRED[cls], **settings, cache_dir=str(tmp_path))
    for name, value in settings.items():
        assert getattr(module, name) == value, name
    assert module.cache_dir == tmp_path


def test_the_base_class_takes_keywords_only() -> None:
    with pytest.raises(TypeError):
        PreferenceDataModule(8)  # a positional pass would shift values if the order changed
