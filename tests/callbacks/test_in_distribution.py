"""``(train)`` marks only the validation sets drawn from the training distribution, for any number of named sets."""

from __future__ import annotations

from types import SimpleNamespace

from rdpo_lightning.callbacks.report import MixtureResult, ShiftReport, format_table
from rdpo_lightning.callbacks.worst_case import in_distribution_names

NAMES = ["held_out", "group=a", "group=b", "other_users"]


def test_a_mixture_datamodule_serves_its_training_mixture_first():
    assert in_distribution_names(SimpleNamespace(val_names=NAMES), NAMES) == {"held_out"}


def test_pairwise_data_without_a_held_out_split_has_no_training_set():
    datamodule = SimpleNamespace(has_held_out=False)
    assert in_distribution_names(datamodule, ["other_users", "more_users"]) == set()


def test_a_datamodule_can_name_its_in_distribution_sets():
    datamodule = SimpleNamespace(has_held_out=True, in_distribution_names=["group=a", "group=b"])
    assert in_distribution_names(datamodule, NAMES) == {"group=a", "group=b"}


def test_the_table_marks_exactly_those_sets():
    training = in_distribution_names(SimpleNamespace(has_held_out=False), NAMES[3:]) | {"held_out"}
    report = ShiftReport([MixtureResult(n, loss=0.5, in_distribution=n in training) for n in NAMES])
    marked = [line.split()[0] for line in format_table(report).splitlines() if "(train)" in line]
    assert marked == ["held_out"]
