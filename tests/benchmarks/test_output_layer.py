"""benchmarks/output_layer.py at ``--tiny``: one line per path, and the two paths agree on the log-probs and the
weight gradient (the benchmark compares like with like)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.benchmarks.tiny_runs import run_tiny_here


def test_tiny_run_times_both_paths_on_the_same_numbers(tmp_path: Path) -> None:
    run = run_tiny_here("output_layer", cwd=tmp_path)
    lines = run.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["chunked", "tiled"]
    figures = [re.search(r"log-prob sum (\S+), \|dW\| (\S+)", line).groups() for line in lines]
    (sum_chunked, grad_chunked), (sum_tiled, grad_tiled) = [tuple(map(float, f)) for f in figures]
    assert abs(sum_chunked - sum_tiled) < 1e-4 * abs(sum_chunked) and sum_chunked < 0
    assert abs(grad_chunked - grad_tiled) < 1e-4 * grad_chunked and grad_chunked > 0
    assert all(re.search(r"[\d.]+ s wall, [\d.]+ s CPU, peak \+\d+ MiB", line) for line in lines)
