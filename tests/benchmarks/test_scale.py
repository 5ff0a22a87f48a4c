"""benchmarks/scale.py end to end at ``--tiny`` (TRL's DPOTrainer included); it publishes nothing at that size. Its main
runs in this process; every configuration runs in a fresh process of the script, as a user's run does."""

from __future__ import annotations

from pathlib import Path

from tests.benchmarks.tiny_runs import run_tiny_here


def test_tiny_run_measures_every_configuration_against_trl(tmp_path: Path) -> None:
    out = tmp_path / "scale.md"
    run = run_tiny_here(
        "scale", "--lengths", "long_tailed", "--configs", "trl-dpo", "ours-dpo", "ours-wdpo", "--output", str(out),
        cwd=tmp_path, RDPO_CACHE=str(tmp_path / "cache"),
    )  # fmt: skip
    rows = {}
    for line in run.stdout.split("Host memory")[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| long_tailed"):
            rows[cells[1]] = cells
    assert set(rows) == {"trl-dpo", "ours-dpo", "ours-wdpo"}
    for cells in rows.values():
        peak, tokens_per_s = float(cells[2]), float(cells[6])
        assert 0.1 < peak < 8 and tokens_per_s > 0 and float(cells[8]) > 0
    assert rows["trl-dpo"][3] == rows["trl-dpo"][5] == "1.00"
    # the live-memory run (default: TRL's and our DPO) tracks live blocks only: below the plain high-water mark
    for name in ("trl-dpo", "ours-dpo"):
        assert 0.1 < float(rows[name][4]) <= float(rows[name][2]) * 1.05, rows[name]
    assert rows["ours-wdpo"][4] == "—"
    assert "live peak" in out.read_text().split("Targets")[1]
    assert "not a published figure" in out.read_text()
    host = {}  # the host's high-water mark during the fit and after it: never lower after
    for line in out.read_text().split("Host memory")[1].splitlines():
        if line.startswith("| long_tailed"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            host[cells[1]] = (float(cells[2]), float(cells[3]))
    assert set(host) == set(rows)
    assert all(0.1 < during <= after for during, after in host.values()), host


def test_live_run_reaches_the_heaviest_batch() -> None:
    """The live-memory run's measured steps reach the batch with the most padded or real tokens, and at least one."""
    from benchmarks.scale import live_steps

    light, long_one, many_mid = (10, 5, 5), (10, 900, 5), (200, 300, 300)
    assert live_steps([light] * 8, batch_size=2) == 1  # every batch alike: the warm-up and one more
    assert live_steps([light, light, light, light, long_one, light], batch_size=2) == 2
    # padded: batch 1 (one long response pads both rows); real: batch 3 (every sequence medium-long)
    shapes = [light, light, long_one, light, light, light, many_mid, many_mid]
    assert live_steps(shapes, batch_size=2) == 3
