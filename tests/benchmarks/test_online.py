"""benchmarks/online.py at ``--tiny``: real offline and online fits of every method, their saved results read back,
the report's paired differences recomputed from them; a run split over two calls sharing ``--runs`` fits each run once
and judges the same numbers."""

from __future__ import annotations

import importlib
import json
import math
import re
from pathlib import Path

import pytest

from tests.benchmarks.tiny_runs import run_tiny_here

online = importlib.import_module("benchmarks.online")


def test_tiny_online_benchmark_compares_every_method_online_and_offline(tmp_path: Path):
    runs = tmp_path / "runs"
    common = ("--scenarios", "pair", "--out", str(tmp_path), "--runs", str(runs))
    first = run_tiny_here("online", *common, "--train-seeds", "0", cwd=tmp_path)
    assert "not yet done" in first.stderr and not (tmp_path / "online.txt").exists()
    run = run_tiny_here("online", *common, "--train-seeds", "1", cwd=tmp_path)
    fitted = re.findall(r"\] pair \w+ \w+, seed (\d):", run.stderr)
    assert fitted == ["1"] * 6  # the second call fits its seed only: seed 0's six fits are in --runs
    text = (tmp_path / "online.txt").read_text()
    assert text.strip() == run.stdout.strip() and "TINY" in text
    results = json.loads((tmp_path / "online.json").read_text())["runs"]
    assert {(r["method"], r["mode"], r["seed"]) for r in results} == {
        (m, mode, s) for m in online.METHODS for mode in online.MODES for s in (0, 1)
    }
    for r in results:
        assert r["steps"] == 4  # equal optimizer steps in both modes (tiny: 16 prompts, batch 4, 1 epoch)
        assert (r["generated_tokens"] > 0) == (r["mode"] == "online")
    by = {(r["method"], r["mode"], r["seed"]): r for r in results}
    for method in online.METHODS:  # the report's per-seed gaps are online minus offline of the saved results
        gaps = [by[(method, "online", s)]["worst-case reward"] - by[(method, "offline", s)]["worst-case reward"]
                for s in (0, 1)]  # fmt: skip
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"{method} online - {method} offline")
                    and "worst-case reward" in text.split(ln)[0].rsplit("Scenario", 1)[1])  # fmt: skip
        assert [float(g) for g in re.findall(r"[+-]\d\.\d{4}", line)[:2]] == pytest.approx(gaps, abs=6e-5)


def test_tiny_online_benchmark_adds_trl_online_dpo_at_equal_steps(tmp_path: Path):
    """``--trl``: TRL's OnlineDPOTrainer trains DPO from the same initial policy for as many optimizer steps as ours,
    judged by the same validation; the report pairs it with our online DPO."""
    run = run_tiny_here(
        "online", "--trl", "--scenarios", "pair", "--methods", "DPO", "--out", str(tmp_path), cwd=tmp_path
    )
    results = json.loads((tmp_path / "online.json").read_text())["runs"]
    assert {(r["mode"], r["seed"]) for r in results} == {(m, s) for m in (*online.MODES, "trl") for s in (0, 1)}
    by = {(r["mode"], r["seed"]): r for r in results}
    for seed in (0, 1):
        trl = by[("trl", seed)]
        assert trl["steps"] == by[("online", seed)]["steps"] == 4
        assert trl["pairs"] == 16 and trl["generated_tokens"] > 0  # 4 steps of 4 prompts, 2 completions each
        assert all(math.isfinite(trl[name]) for name, _, _ in online.MEASURES)
    assert re.search(r"^DPO\s+trl\s", run.stdout, re.M) and "DPO online - DPO trl" in run.stdout
