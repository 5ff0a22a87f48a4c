"""benchmarks/profile_step.py at ``--tiny`` (TRL's DPOTrainer included), and the interval arithmetic behind its
GPU-busy column."""

from __future__ import annotations

import random
from pathlib import Path

from tests.benchmarks.tiny_runs import run_tiny_here


def test_tiny_profile_reports_both_frameworks_steps_operators_and_regions(tmp_path: Path) -> None:
    out = tmp_path / "profile.md"
    run_tiny_here("profile_step", "--output", str(out), cwd=tmp_path, RDPO_CACHE=str(tmp_path / "cache"))
    report = out.read_text()
    sections = dict(part.split("\n", 1) for part in report.split("\n## ")[1:])
    assert set(sections) == {"trl-dpo", "ours-dpo"}
    for name, text in sections.items():
        steps = [line for line in text.splitlines() if line.startswith(("| 1 |", "| 2 |"))]
        assert len(steps) == 2 and all(float(line.split("|")[2]) > 0 for line in steps), name
        assert "| `aten::mm` |" in text  # the operator table holds the matrix products
        assert "| optimizer step |" in text
    ours = sections["ours-dpo"]
    for region in (
        "rdpo.output_layer",
        "rdpo.nonfinite_guard",
        "rdpo.clip_grad_norm",
        "rdpo.closure",
        "optimizer update",
    ):
        assert f"| {region}" in ours, region
    assert "Not found in the package" not in ours  # every labelled function still exists where REGIONS says


def test_busy_time_is_the_union_of_kernel_intervals() -> None:
    from benchmarks.profile_step import _union

    rng = random.Random(0)
    for _ in range(50):
        intervals = [(a, a + rng.randint(0, 30)) for a in (rng.randint(0, 100) for _ in range(rng.randint(0, 8)))]
        covered = {t for start, end in intervals for t in range(start, end)}  # unit cells, brute force
        assert _union([(float(s), float(e)) for s, e in intervals]) == len(covered)
