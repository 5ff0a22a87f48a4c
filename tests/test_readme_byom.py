"""README, "Bring your own model": every command of its block runs as written (``rdpo`` and ``python`` from this
environment), from a directory holding tiny stand-ins for the user's model (``path/to/my-model``, a saved GPT-2 with
its tokenizer) and pairs (``pairs.jsonl``)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from tests.test_input_errors import write_pairs

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
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RDPO_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    commands = readme_commands()
    assert [c.split()[0] for c in commands] == ["rdpo", "rdpo", "python"]
    for command in commands:
        argv = shlex.split(command)
        if argv[0] == "rdpo":
            argv = [sys.executable, "-m", "rdpo_lightning.cli", *argv[1:]]
        else:
            argv[0] = sys.executable
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
    assert (tmp_path / "my-model-rdpo" / "model.safetensors").is_file()
    assert "worst-case loss" in (tmp_path / "my-model-rdpo" / "README.md").read_text()
    generated = done.stdout.strip()
    assert generated.startswith("the morning train") and len(generated.split()) > 3  # it generated tokens
