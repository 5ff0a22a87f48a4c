"""Running a benchmark script at ``--tiny`` the way a user runs it: a fresh process with the repository on its path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_tiny(script: str, *args: str, cwd: Path, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    """``python benchmarks/<script>.py --tiny <args>`` from ``cwd`` with extra environment ``env``; it must succeed."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), "--tiny", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT), **env),
        cwd=cwd,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return run
