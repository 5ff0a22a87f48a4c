"""benchmarks/shift.py end to end at ``--tiny`` (real Trainer, RobustDPO, world data, evaluation callbacks), and its
worst-case arithmetic against a direct computation."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
from pathlib import Path

import pytest

from tests.benchmarks.tiny_runs import published, run_tiny

shift = importlib.import_module("benchmarks.shift")  # the repository root is on pytest's path


def test_per_seed_worst_case_picks_the_worst_alpha_of_each_metric():
    run = shift.RunResult(
        method="DPO",
        seed=0,
        accuracy={"0.00": 0.7, "0.50": 0.6, "1.00": 0.65},
        loss={"0.00": 0.5, "0.50": 0.9, "1.00": 0.8},
        reward={"0.00": 0.3, "0.50": 0.2, "1.00": 0.1},
        margin={"0.00": 0.1, "0.50": 0.0, "1.00": -0.1},
        input_grad_sq=1.0,
        fit_seconds=0.0,
        eval_seconds=0.0,
    )
    assert shift.per_seed_worst(run, "accuracy") == (0.6, "0.50")
    assert shift.per_seed_worst(run, "loss") == (0.9, "0.50")
    assert shift.per_seed_worst(run, "reward") == (0.1, "1.00")


def test_cell_is_mean_and_sample_std():
    assert shift.cell([0.5, 0.7]) == f"0.600 ± {math.sqrt(0.02):.3f}"
    assert shift.cell([math.nan]) == "—"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """``--tiny`` as a user runs it, without ``--out``: it writes to a temp folder (``TMPDIR`` points it here), and
    the published results are byte for byte what they were."""
    temp = tmp_path_factory.mktemp("shift")
    run = run_tiny("shift", cwd=temp, TMPDIR=str(temp))
    return run, temp / shift.TINY_OUT.name


def test_tiny_refuses_to_write_over_the_published_results(tiny_run):
    _, out = tiny_run
    before = published()
    with pytest.raises(SystemExit, match="--tiny would overwrite the published results"):
        shift.main(["--tiny", "--out", str(shift.RESULTS), "--quiet"])  # before any training
    with pytest.raises(SystemExit, match="--tiny would overwrite the published results"):  # a saved --tiny run too
        shift.main(["--from-json", str(out / "shift.json"), "--out", str(shift.RESULTS), "--quiet"])
    assert published() == before


def test_tiny_run_writes_table_plot_and_raw_results(tiny_run):
    run, out = tiny_run
    table = (out / "shift.txt").read_text()
    assert table.strip() == run.stdout.strip()
    png = (out / "shift.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    args = shift.parse_args(["--tiny"])
    main, sweep = shift.methods(args)
    names = [m.name for m in main + sweep]
    assert {"DPO", "KLDPO", "WDPO"} == {m.family for m in main}
    assert len(sweep) >= 2  # a tau and a rho beyond the main ones
    for name in names:
        assert name in table
    for alpha in ["0.00", "0.10*", "0.50", "1.00"]:  # the grid of --tiny plus the training alpha, marked
        assert sum(line.startswith(alpha + " ") for line in table.splitlines()) == 3  # accuracy, reward, loss tables
    assert "Worst case" in table and "oracle r(alpha0)" in table and "reference policy" in table

    raw = json.loads((out / "shift.json").read_text())
    runs = raw["runs"]
    seeds = {name: sorted(r["seed"] for r in runs if r["method"] == name) for name in names}
    for method in main:
        assert seeds[method.name] == list(range(args.seeds))
    for method in sweep:
        assert seeds[method.name] == list(range(args.sweep_seeds))
    alphas = {"0.00", "0.10", "0.50", "1.00"}
    for r in runs:
        for metric in ("accuracy", "loss", "reward"):
            assert set(r[metric]) == alphas, (r["method"], metric)
        assert all(0.0 <= v <= 1.0 for v in r["accuracy"].values())
        assert all(0.0 <= v <= 1.0 for v in r["reward"].values())
        assert all(math.isfinite(v) and v > 0 for v in r["loss"].values())
        assert math.isfinite(r["input_grad_sq"]) and r["input_grad_sq"] > 0
    for d in raw["data"]:
        assert d["flips"]["0.10"] == 0.0  # alpha0 never disagrees with itself
        for key in ("oracle_train", "oracle_bayes", "flips"):
            assert all(0.0 <= v <= 1.0 for v in d[key].values())
        assert d["oracle_train"]["0.10"] == d["oracle_bayes"]["0.10"]
    for r in raw["reference_policy"]:
        assert all(abs(v - math.log(2)) < 1e-5 for v in r["loss"].values())  # pi = pi_ref: every pair loss is log 2


def test_table_worst_case_matches_the_raw_runs(tiny_run):
    """The worst-accuracy cell of each method equals the mean over seeds of min over alpha, recomputed here."""
    _, out = tiny_run
    raw = json.loads((out / "shift.json").read_text())
    table = (out / "shift.txt").read_text().split("Worst case over the alpha grid")[1]
    for name in {r["method"] for r in raw["runs"]}:
        worst = [min(r["accuracy"].values()) for r in raw["runs"] if r["method"] == name]
        line = next(line for line in table.splitlines() if line.startswith(name + " "))
        cells = re.split(r"\s{2,}", line.strip())  # name, seeds, accuracy at alpha0, worst accuracy, ...
        assert cells[1] == str(len(worst))
        assert cells[3] == shift.cell(worst), (name, line)


def test_saved_run_re_renders_to_the_same_table(tiny_run, tmp_path: Path):
    run, out = tiny_run
    report = shift.main(["--from-json", str(out / "shift.json"), "--out", str(tmp_path), "--quiet"])
    assert report.strip() == run.stdout.strip()
    assert (tmp_path / "shift.png").read_bytes().startswith(b"\x89PNG")
    again, first = (json.loads((d / "shift.json").read_text()) for d in (tmp_path, out))
    assert again["args"].pop("out") == str(tmp_path)
    first["args"].pop("out")
    assert again == first


def test_a_run_saved_before_an_option_existed_re_renders_with_its_default(tiny_run, tmp_path: Path):
    """Older shift.json files lack options added since (here ``--accelerator``): they take the default."""
    _, out = tiny_run
    raw = json.loads((out / "shift.json").read_text())
    del raw["args"]["accelerator"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(raw))
    report = shift.main(["--from-json", str(old), "--out", str(tmp_path / "render"), "--quiet"])
    assert "accelerator cpu;" in report.splitlines()[0]
