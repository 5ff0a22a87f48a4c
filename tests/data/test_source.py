"""The data-set source arguments are declared once (:class:`DatasetSource`) and still reach every DataModule that
reads a data set: in the parser jsonargparse builds (``--help``, YAML), with their defaults, and on the instance."""

from __future__ import annotations

import pytest
from jsonargparse import ArgumentParser

from rdpo_lightning.data.pairwise import PairwisePreferenceDataModule
from rdpo_lightning.data.scored import ScoredCompletionsDataModule

SOURCE = {"path": None, "tokenizer": None, "name": None, "revision": None, "train_split": "train", "val_split": None,
          "apply_chat_template": None, "seed": 0, "max_length": 1024}  # fmt: skip
OWN = {PairwisePreferenceDataModule: {"val_fraction": 0.05, "max_train_samples": None},
       ScoredCompletionsDataModule: {"val_fraction": 0.1, "max_train_prompts": None, "attribute_a": None}}  # fmt: skip


@pytest.mark.parametrize("cls", list(OWN), ids=lambda c: c.__name__)
def test_every_source_argument_reaches_the_parser_with_its_default(cls):
    parser = ArgumentParser()
    parser.add_class_arguments(cls, "data")
    defaults = {a.dest.removeprefix("data."): a.default for a in parser._actions if a.dest.startswith("data.")}
    for name, default in {**SOURCE, **OWN[cls], "batch_size": 8}.items():  # batch_size: the base's, past the source
        assert name in defaults, name
        if default is not None:
            assert defaults[name] == default, name
    required = {a.dest.removeprefix("data.") for a in parser._actions if getattr(a, "required", False)}
    assert {"path", "tokenizer"} <= required


def test_the_source_arguments_land_on_the_instance(tmp_path):
    data = ScoredCompletionsDataModule(
        path=str(tmp_path / "rows.jsonl"), tokenizer="tok", score_columns=["a", "b"], attribute_a="a",
        attribute_b="b", revision="v1", val_split="test", seed=7, batch_size=3,
    )  # fmt: skip
    assert (data.path, data.tokenizer_name, data.revision, data.val_split, data.seed) == (
        str(tmp_path / "rows.jsonl"), "tok", "v1", "test", 7,
    )  # fmt: skip
    assert (data.max_length, data.batch_size, data.score_columns) == (1024, 3, ["a", "b"])
