"""benchmarks/lora.py end to end at ``--tiny``: ours and TRL's LoRA and full fine-tuning, like for like."""

from __future__ import annotations

from pathlib import Path

from tests.benchmarks.tiny_runs import run_tiny


def test_tiny_run_compares_like_for_like_and_reports_every_ratio(tmp_path: Path) -> None:
    run = run_tiny("lora", "--out", str(tmp_path / "lora.md"), cwd=tmp_path, RDPO_CACHE=str(tmp_path / "cache"))
    table = (tmp_path / "lora.md").read_text()
    assert table.strip() == run.stdout.strip()
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 5:
            rows[cells[0]] = cells
    assert {"ours-lora", "trl-lora", "ours-full"} <= set(rows)
    assert rows["ours-lora"][1] == rows["trl-lora"][1]  # the same adapters train on both sides
    assert int(rows["ours-lora"][1].replace(",", "")) < int(rows["ours-full"][1].replace(",", ""))
    for label in ("step time, ours LoRA / TRL LoRA", "peak memory growth, ours LoRA / ours full fine-tuning"):
        assert label in table
