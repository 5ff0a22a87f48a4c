"""benchmarks/scale.py end to end at ``--tiny`` (TRL's DPOTrainer included); it publishes nothing at that size."""

from __future__ import annotations

from pathlib import Path

from tests.benchmarks.tiny_runs import ROOT, run_tiny

PUBLISHED = ROOT / "benchmarks" / "results" / "scale.md"


def test_tiny_run_measures_every_configuration_against_trl(tmp_path: Path) -> None:
    before = PUBLISHED.read_bytes() if PUBLISHED.exists() else None
    out = tmp_path / "scale.md"
    run = run_tiny(
        "scale", "--lengths", "long_tailed", "--configs", "trl-dpo", "ours-dpo", "ours-wdpo", "--output", str(out),
        cwd=tmp_path, timeout=600, RDPO_CACHE=str(tmp_path / "cache"),
    )  # fmt: skip
    rows = {}
    for line in run.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| long_tailed"):
            rows[cells[1]] = cells
    assert set(rows) == {"trl-dpo", "ours-dpo", "ours-wdpo"}
    for cells in rows.values():
        peak, tokens_per_s = float(cells[2]), float(cells[4])
        assert 0.1 < peak < 8 and tokens_per_s > 0
    assert rows["trl-dpo"][3] == "1.00"
    assert "not a published figure" in out.read_text()
    assert (PUBLISHED.read_bytes() if PUBLISHED.exists() else None) == before
