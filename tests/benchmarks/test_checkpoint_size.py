"""benchmarks/checkpoint_size.py end to end at ``--tiny``: both checkpoints written and measured, the adapter-only one
smaller, its policy tensors the adapters' by count."""

from __future__ import annotations

import re
from pathlib import Path

from tests.benchmarks.tiny_runs import run_tiny


def test_tiny_run_measures_both_checkpoints(tmp_path: Path) -> None:
    run = run_tiny("checkpoint_size", "--out", str(tmp_path / "size.md"), cwd=tmp_path, RDPO_CACHE=str(tmp_path / "c"))
    table = (tmp_path / "size.md").read_text()
    assert table.strip() == run.stdout.strip()
    sizes = [tuple(map(float, m)) for m in re.findall(r"\| ([\d.]+) \| ([\d.]+) \|", table)]
    assert len(sizes) == 2 and sizes[0][0] < sizes[1][0] and sizes[0][1] < sizes[1][1]  # adapter-only, with base
    trainable = int(re.search(r"([\d,]+) trainable", table).group(1).replace(",", ""))
    assert abs(sizes[0][1] - trainable * 4 / 1e6) < 0.01  # the adapter-only policy tensors: the adapters, float32
