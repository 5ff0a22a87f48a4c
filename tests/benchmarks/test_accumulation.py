"""benchmarks/accumulation.py end to end at ``--tiny``: strategies against DPO (accumulation 8); no figure. Its main
runs in this process; every strategy runs in a fresh process of the script, as a user's run does."""

from __future__ import annotations

from pathlib import Path

from tests.benchmarks.tiny_runs import run_tiny_here


def test_tiny_run_times_strategies_against_dpo(tmp_path: Path) -> None:
    out = tmp_path / "accumulation.md"
    # one strategy of each route (every strategy is a fresh process: the published run has them all); the scoring
    # pass by MixtureDRO, whose set is built from the pairs' own score margins
    strategies, cache = ["--strategies", "kldpo", "mixture_dro"], str(tmp_path / "c")
    run = run_tiny_here("accumulation", *strategies, "--output", str(out), cwd=tmp_path, RDPO_CACHE=cache)
    rows = {}
    for line in run.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 9 and cells[0] in ("dpo", "kldpo", "dr_dpo", "cvar", "chi_square", "group_dro", "mixture_dro"):
            rows[cells[0]] = cells
    assert set(rows) == {"dpo", "kldpo", "mixture_dro"}  # DPO, the baseline, always runs
    assert rows["dpo"][3] == rows["dpo"][5] == rows["dpo"][7] == "1.00"
    assert rows["kldpo"][1] == "one pass" and rows["mixture_dro"][1] == "scoring pass"
    for cells in rows.values():
        assert float(cells[2]) > 0 and float(cells[4]) > 0 and 0.1 < float(cells[6]) < 8
    text = out.read_text()
    assert "not a published figure" in text and "load average" in text and "Targets:" in text
