"""benchmarks/throughput.py end to end at ``--tiny`` (every configuration, TRL's included), and its pure helpers."""

from __future__ import annotations

import importlib.util
import math
import subprocess
from pathlib import Path

import pytest

from tests.benchmarks.tiny_runs import run_tiny, run_tiny_here


def load_script():
    return importlib.import_module("benchmarks.throughput")  # the repository root is on pytest's path


def table_rows(text: str, first_cell: set[str]) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] in first_cell:
            rows[cells[0]] = cells
    return rows


def run_throughput(tmp_path: Path, *extra: str, here: bool = False) -> subprocess.CompletedProcess:
    out = str(tmp_path / "throughput.md")
    run = run_tiny_here if here else run_tiny
    return run("throughput", "--out", out, *extra, cwd=tmp_path, RDPO_CACHE=str(tmp_path / "cache"))


def test_tiny_run_without_trl_times_our_configurations(tmp_path: Path) -> None:
    """Our side of the benchmark needs no TRL (the ``bench`` extra): it runs, and rows of TRL are absent. Main in this
    process (the next test runs the script as a user does); each configuration in its own forked process."""
    throughput = load_script()
    run = run_throughput(tmp_path, "--skip-trl", "--methods", "dpo,kldpo,wdpo-fd", here=True)
    rows = table_rows(run.stdout, set(throughput.CONFIGS))
    assert set(rows) == {"dpo", "kldpo", "wdpo-finite_difference"}
    header = table_rows(run.stdout, {"config"})["config"]
    step = {name: float(cells[header.index("median step (s)")]) for name, cells in rows.items()}
    assert all(math.isfinite(v) and v > 0 for v in step.values()), step


def test_tiny_run_prints_a_row_per_configuration(tmp_path: Path) -> None:
    pytest.importorskip("trl", reason="TRL is the bench extra: pip install -e '.[bench]'")
    throughput = load_script()
    out = tmp_path / "throughput.md"
    run = run_throughput(tmp_path)
    assert out.read_text().strip() == run.stdout.strip()
    rows = table_rows(run.stdout, set(throughput.CONFIGS))
    assert set(rows) == set(throughput.CONFIGS)
    header = table_rows(run.stdout, {"config"})["config"]
    column = {name: i for i, name in enumerate(header)}
    for name, cells in rows.items():
        step = float(cells[column["median step (s)"]])
        assert math.isfinite(step) and step > 0, (name, step)
        assert int(cells[column["tokens/step"]]) == 2 * 2 * 16, name  # tiny: 2 pairs × 2 sequences × 16 tokens
        assert float(cells[column["live peak (MiB)"]]) > 0, name
    comparisons = table_rows(run.stdout, {t.what for t in throughput.TARGETS})
    assert set(comparisons) == {t.what for t in throughput.TARGETS}
    assert "TRL ran with {'bf16': True, 'gradient_checkpointing': True" in run.stderr  # the defaults row is TRL's


def test_methods_aliases_and_skip_trl() -> None:
    throughput = load_script()
    args = throughput.parse_args(["--methods", "dpo,wdpo-fd,trl,dpo", "--skip-trl"])
    assert throughput.chosen_configs(args) == ["dpo", "wdpo-finite_difference"]
    with pytest.raises(SystemExit, match="unknown configuration 'dpx'"):
        throughput.chosen_configs(throughput.parse_args(["--methods", "dpo,dpx"]))
    with pytest.raises(SystemExit, match="--hidden"):
        throughput.settings_from(throughput.parse_args(["--hidden", "96"]))


def test_targets_compare_the_right_rows() -> None:
    throughput = load_script()

    def row(name: str, step: float) -> object:
        return throughput.Row(throughput.CONFIGS[name], step, step, step, 100, 100 / step, 0, 10, 10)

    rows = {"dpo": row("dpo", 1.0), "trl": row("trl", 1.4), "kldpo": row("kldpo", 1.06)}
    faster = throughput.Target("t", "dpo", "trl", "tokens_per_s", 1.3, at_least=True)
    assert faster.measure(rows) == pytest.approx((1.4, True))
    slower = throughput.Target("k", "kldpo", "dpo", "median_s", 1.05)
    ratio, met = slower.measure(rows)
    assert ratio == pytest.approx(1.06) and met is False
    assert throughput.Target("w", "wdpo-exact", "dpo", "median_s", 3.0).measure(rows) is None
