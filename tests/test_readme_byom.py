"""README, "Bring your own model": every command of its block runs as written (``rdpo`` and ``python`` from this
environment), from a directory holding tiny stand-ins for the user's model (``path/to/my-model``, a saved GPT-2 with
its tokenizer), pairs (``pairs.jsonl``) and a shifted set (``other_users.jsonl``: pairs with the opposite
preference); the block ends in ``rdpo validate``'s table of both sets and their worst case."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from tests.cli.test_input_errors import write_pairs
from tests.test_own_data_shifts import table_rows

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- byom-commands"


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text[text.index(MARKER) :], re.S).group(1)
    joined = block.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_readme_commands_run_on_tiny_stand_ins(tmp_path, tiny_model_dir):
    shutil.copytree(tiny_model_dir, tmp_path / "path" / "to" / "my-model")
    write_pairs(tmp_path / "pairs.jsonl", count=24)
    flipped = [json.loads(line) for line in write_pairs(tmp_path / "other_users.jsonl", count=8, seed=1).open()]
    flipped = [{**row, "chosen": row["rejected"], "rejected": row["chosen"]} for row in flipped]  # a shifted set
    (tmp_path / "other_users.jsonl").write_text("".join(json.dumps(row) + "\n" for row in flipped))
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RDPO_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    commands = readme_commands()
    assert [c.split()[:2] for c in commands] == [
        ["rdpo", "fit"],
        ["rdpo", "export"],
        ["python", "-c"],
        ["rdpo", "validate"],
    ]
    outputs = []
    for command in commands:
        argv = shlex.split(command)
        if argv[0] == "rdpo":
            argv = [sys.executable, "-m", "rdpo_lightning.cli", *argv[1:]]
        else:
            argv[0] = sys.executable
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout)
    assert (tmp_path / "my-model-rdpo" / "model.safetensors").is_file()
    assert "worst-case loss" in (tmp_path / "my-model-rdpo" / "README.md").read_text()
    generated = outputs[2].strip()
    assert generated.startswith("the morning train") and len(generated.split()) > 3  # it generated tokens
    rows = table_rows(outputs[3])  # the validate table: both sets, and the worst of them
    losses = {name: float(values[0]) for name, values in rows.items() if name not in ("worst", "at")}
    assert list(losses) == ["held_out", "other_users"]
    assert float(rows["worst"][1]) == max(losses.values()) and rows["at"][0] == max(losses, key=losses.get)
