"""Loading local files: a column that changes type in a file of a few hundred kB must not crash the process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: load one file through load_table in a fresh process, importing only the loading modules (not torch)
LOAD = """
import sys, types, datasets
package = types.ModuleType("rdpo_lightning.data")
package.__path__ = [sys.argv[3] + "/rdpo_lightning/data"]
sys.modules["rdpo_lightning.data"] = package
datasets.config.HF_DATASETS_CACHE = sys.argv[2]
from rdpo_lightning.data.hub import load_table
table = load_table(sys.argv[1])
print(len(table), type(table.features["meta"]).__name__)
"""


@pytest.mark.parametrize("first, second", [("web", True), (1, True), (float("nan"), ["web", "books"])])
def test_a_column_changing_type_across_pyarrow_blocks_loads(tmp_path, first, second):
    """pyarrow's JSON reader (26.0) segfaults when a column's type changes between the blocks it parses in parallel
    and ``datasets`` has not seen the change first (scalars; or its pre-scan failed on a NaN or a huge number):
    files of about 0.3-2.6 MB under its defaults. One block per file avoids it. Run in a subprocess, since a segfault
    would take pytest down with it."""
    rows = [{"prompt": "the day", "chosen": "happy", "rejected": "gloomy", "meta": first}]
    rows += [{"prompt": "the day " * 60_000, "chosen": "sunny", "rejected": "rain", "meta": second}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert 400_000 < path.stat().st_size < 2_000_000
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", LOAD, str(path), str(tmp_path / "hf_cache"), str(ROOT)]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    assert result.stdout.split() == ["2", "Json"]  # the mixed column is read, as datasets reads mixed types
