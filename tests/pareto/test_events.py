"""A mixture in a tag spelled another way than the run logged it (``alpha=0.8`` for ``alpha=0.80``): ``rdpo pareto``
reads the logged tag, and a mixture never logged is one line listing what the run did log. Runs are real TensorBoard
event files written with the values the test then expects back."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from rdpo_lightning.pareto.events import Axis, mixture_spelling
from rdpo_lightning.pareto.report import main

#: method → per-seed (reward at the training mixture, worst-case reward) of two validation passes
VALUES = {
    "DPO": [((0.50, 0.20), (0.55, 0.22)), ((0.48, 0.21), (0.52, 0.19)), ((0.51, 0.18), (0.50, 0.23))],
    "KLDPO": [((0.47, 0.30), (0.49, 0.28)), ((0.46, 0.29), (0.50, 0.31)), ((0.45, 0.32), (0.48, 0.27))],
}


def write_runs(root: Path) -> list[str]:
    runs = []
    for method, seeds in VALUES.items():
        for seed, passes in enumerate(seeds):
            directory = root / method / f"s{seed}"
            with SummaryWriter(str(directory)) as writer:
                for step, (at_train, worst) in enumerate(passes, start=1):
                    writer.add_scalar("val/reward/alpha=0.80", at_train, step)
                    writer.add_scalar("val/reward/alpha=0.00", at_train - 0.1, step)
                    writer.add_scalar("val/reward/worst_case", worst, step)
            runs += ["--run", f"{method}@{seed}={directory}"]
    return runs


def test_any_spelling_of_a_logged_mixture_reads_its_tag(tmp_path, capsys):
    runs = write_runs(tmp_path / "runs")
    tables = {}
    for spelling in ("alpha=0.80", "alpha=0.8", "alpha=.8"):
        out = tmp_path / f"{spelling}.png"
        tables[spelling] = main([*runs, "--metric", "reward", "--train-mixture", spelling, "--out", str(out)])
        assert out.exists()
    verdicts = {spelling: table.splitlines()[1:] for spelling, table in tables.items()}  # the header repeats --x
    assert verdicts["alpha=0.8"] == verdicts["alpha=0.80"] == verdicts["alpha=.8"]
    assert verdicts["alpha=0.8"][-1].startswith("KLDPO       3  +0.0600 +0.1200 +0.0400")


def test_a_mixture_never_logged_lists_what_was_and_the_nearest(tmp_path, capsys):
    runs = write_runs(tmp_path / "runs")
    with pytest.raises(SystemExit) as exit_info:
        main([*runs, "--metric", "reward", "--train-mixture", "alpha=0.75", "--out", str(tmp_path / "f.png")])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("rdpo pareto: error: run ") and "never logged ['val/reward/alpha=0.75']" in line
    assert line.endswith(
        "it logged under val/reward/: alpha=0.00, alpha=0.80, worst_case; did you mean 'val/reward/alpha=0.80'?"
    )


def test_vector_mixtures_are_one_whatever_the_order_and_decimals():
    logged = {"val/anger=0.20,fear=0.80/accuracy": {}, "val/anger=0.80,fear=0.20/accuracy": {}, "val/loss": {}}
    axis = Axis.parse("0.9*val/fear=0.8,anger=0.2/accuracy + 0.1*val/anger=0.8,fear=0.2/accuracy")
    assert axis.spelled_as_logged(logged).terms == (
        (0.9, "val/anger=0.20,fear=0.80/accuracy"),
        (0.1, "val/anger=0.80,fear=0.20/accuracy"),
    )
    assert mixture_spelling("val/reward/alpha=0.1") != mixture_spelling("val/reward/alpha=0.10000001")
    assert Axis.parse("val/loss").spelled_as_logged(logged).terms == ((1.0, "val/loss"),)
